import pytest

from layerflow.layout import ClipSpec, LayerLayout, LayerSpec


def test_official_clip_order_per_alpha_representation():
    assert LayerLayout.official("alpha_clip").clips == (
        ClipSpec("foreground", "color"),
        ClipSpec("foreground", "alpha"),
        ClipSpec("background", "color"),
        ClipSpec("composite", "color"),
    )
    for alpha in ("rgb", "latent_offset"):
        assert [c.layer for c in LayerLayout.official(alpha).clips] == [
            "foreground",
            "background",
            "composite",
        ]


def test_tasks_resolve_conditions_and_prompts():
    layout = LayerLayout.official()
    generate = layout.for_task("generate")
    assert generate.condition_clips == () and generate.generated_clips == (0, 1, 2, 3)
    assert [(lay.name, lay.prompt_index) for lay in generate.prompt_layers] == [
        ("foreground", 0),
        ("background", 1),
        ("composite", 2),
    ]
    assert layout.for_task("foreground_to_background").condition_clips == (0, 1)
    assert layout.for_task("background_to_foreground").condition_clips == (2,)
    decompose = layout.for_task("decompose")
    assert decompose.condition_clips == (3,) and decompose.generated_clips == (0, 1, 2)
    assert [lay.name for lay in decompose.prompt_layers] == ["foreground", "background"]
    assert decompose.segment_lengths(226, [1350, 1350, 1350, 1350]) == [226, 226, 1350, 1350, 1350, 1350]


def test_two_foreground_layout():
    layout = LayerLayout.with_foregrounds(2, alpha="alpha_clip")
    task = layout.for_task("foreground_to_background")
    assert [c.layer for c in layout.clips] == [
        "foreground_0",
        "foreground_0",
        "foreground_1",
        "foreground_1",
        "background",
        "composite",
    ]
    assert task.condition_clips == (0, 1, 2, 3)
    assert [lay.prompt_index for lay in task.prompt_layers] == [0, 1, 2, 3]
    assert LayerLayout.from_dict(layout.to_dict()) == layout


def test_resolve_prompts_errors_name_the_layer():
    task = LayerLayout.official().for_task("decompose")
    assert task.resolve_prompts({"foreground": "a", "background": "b"}) == ["a", "b"]
    with pytest.raises(ValueError, match=r"missing for layer\(s\) \['background'\]"):
        task.resolve_prompts({"foreground": "a"})
    with pytest.raises(ValueError, match="composite"):
        task.resolve_prompts({"foreground": "a", "background": "b", "composite": "c"})
    with pytest.raises(ValueError, match="needs 2 prompts"):
        task.resolve_prompts(["a"])
    with pytest.raises(TypeError, match="single str"):
        task.resolve_prompts("a")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LayerLayout(()), "at least one layer"),
        (lambda: LayerLayout((LayerSpec("a", "background"), LayerSpec("a", "composite"))), "repeated"),
        (lambda: LayerSpec("x", "sky"), "role must be one of"),  # type: ignore[arg-type]
        (lambda: LayerSpec("bad name", "background"), "identifier"),
        (lambda: LayerLayout.official("mask"), "alpha must be one of"),  # type: ignore[arg-type]
        (lambda: LayerLayout.official().for_task("inpaint"), "unknown task"),
        (lambda: LayerLayout.from_dict({"layers": [{"name": "a"}]}), "malformed"),
    ],
)
def test_bad_layouts_raise(build, message):
    with pytest.raises((ValueError, KeyError), match=message):
        build()


def test_attention_table_isolates_condition_clips():
    task = LayerLayout.official().for_task("foreground_to_background")  # conditions: fg colour + alpha
    assert task.attention_table(isolate_conditions=False) is None
    assert LayerLayout.official().for_task("generate").attention_table(isolate_conditions=True) is None
    table = task.attention_table(isolate_conditions=True)
    # segments: 3 prompts, then clips fg, fg-alpha, bg, composite
    assert table[3] == [True, True, True, True, True, False, False]
    assert table[4] == table[3]
    assert all(all(row) for row in table[:3] + table[5:])
