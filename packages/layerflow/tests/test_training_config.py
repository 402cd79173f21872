"""Config files load for every stage; bad configs raise naming the key, before any model is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerflow.training.config import (
    CONFIG_DIR,
    STAGE_LEARNING_RATES,
    ConfigError,
    load_config,
    parse_override,
)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_tiny_config_loads_with_stage_defaults(stage: int) -> None:
    config = load_config(None, stage)
    assert config.stage == stage
    assert config.learning_rate == STAGE_LEARNING_RATES[stage] == {1: 1e-4, 2: 1e-3, 3: 5e-3}[stage]
    assert config.train_layer_embedder is (stage == 1)
    assert config.output_dir == Path("outputs/train") / f"stage{stage}"
    frozen = [source.freeze for source in config.data.sources]
    assert frozen == {1: [False], 2: [True], 3: [True, False]}[stage]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_cogvideox_2b_configs_load(stage: int) -> None:
    config = load_config(CONFIG_DIR / f"cogvideox-2b-480x720-stage{stage}.toml", stage)
    assert (config.data.height, config.data.width, config.data.num_frames) == (480, 720, 16)
    assert (config.model.motion_rank, config.model.content_rank, config.model.block_interval) == (8, 256, 6)
    assert config.objective.text_dropout == 0.1
    assert config.learning_rate == STAGE_LEARNING_RATES[stage]
    assert config.run.mixed_precision == "bf16"


def test_stage_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("stage = 2\n")
    with pytest.raises(ConfigError, match="stage 2.*--stage 1"):
        load_config(path, 1)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[optim]\nbatch_sise = 2\n", "optim.batch_sise"),
        ("[optim]\nbatch_size = 'two'\n", "optim.batch_size"),
        ("[optim]\nbatch_size = 0\n", "optim.batch_size"),
        ("[optim]\nlearning_rate = -1.0\n", "optim.learning_rate"),
        ("[optim]\nlr_scheduler = 'sometimes'\n", "optim.lr_scheduler"),
        ("[run]\nmixed_precision = 'fp8'\n", "run.mixed_precision"),
        ("[run]\nema_decay = 1.5\n", "run.ema_decay"),
        ("[model]\ngradient_checkpointing = 1\n", "model.gradient_checkpointing"),
        ("[objective]\ntext_dropout = 1.0\n", "objective.text_dropout"),
        ("[objective.tasks]\ngenerate = 1.0\ninpaint = 1.0\n", "objective.tasks"),
        ("[objective.tasks]\ngenerate = -1.0\n", "objective.tasks.generate"),
        ("[[data.sources]]\nkind = 'simple'\n", "data.sources[0].root"),
        (
            "[[data.sources]]\nkind = 'copy_paste'\nforeground_clips = 'fg'\n",
            "data.sources[0].background_clips",
        ),
        ("[[data.sources]]\nkind = 'simple'\nroot = 'r'\nforegrounds = 2\n", "data.sources[0].foregrounds"),
        ("[[data.sources]]\nkind = 'synthetic'\nforegrounds = 0\n", "data.sources[0].foregrounds"),
        ("[[data.sources]]\nkind = 'webdataset'\n", "data.sources[0].kind"),
        ("[data]\nsources = []\n", "data.sources"),
        ("unknown_section = 1\n", "unknown_section"),
    ],
)
def test_bad_values_raise_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, 1)
    assert key in str(error.value)


LAYOUT = """[model]
layout = { alpha = "alpha_clip", layers = [
    { name = "fg1", role = "foreground" },
    { name = "fg2", role = "foreground" },
    { name = "bg", role = "background" },
    { name = "blend", role = "composite" },
] }
"""


def test_layout_table_takes_the_model_index_form(tmp_path: Path) -> None:
    from layerflow.layout import LayerLayout, LayerSpec
    from layerflow.training.export import config_layout

    path = tmp_path / "c.toml"
    path.write_text(LAYOUT)
    layout = config_layout(load_config(path, 1))
    specs = (("fg1", "foreground"), ("fg2", "foreground"), ("bg", "background"), ("blend", "composite"))
    assert layout == LayerLayout(tuple(LayerSpec(n, r) for n, r in specs), "alpha_clip")
    assert LayerLayout.from_dict(layout.to_dict()) == layout  # the model_index.json form round-trips
    path.write_text(LAYOUT.replace('alpha = "alpha_clip"', 'alpha = "latent_offset", vae_pass = "per_clip"'))
    assert config_layout(load_config(path, 1)).alpha == "latent_offset"
    assert config_layout(load_config(None, 1)) is None  # default: the base model's own layout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('role = "background"', 'role = "sky"'), r"model\.layout\.layers\[2\]\.role must be one of"),
        (('"alpha_clip"', '"rgba"'), r"model\.layout\.alpha must be one of"),
        (('name = "fg2"', 'name = "fg1"'), r"model\.layout: layer names must be unique, repeated: \['fg1'\]"),
        (('{ name = "bg", role', "{ role"), r"model\.layout\.layers\[2\]\.name is required"),
        (('alpha = "alpha_clip"', 'alpha = "alpha_clip", vae_pas = "joint"'), r"model\.layout\.vae_pas"),
        (
            ('alpha = "alpha_clip"', 'alpha = "latent_offset", vae_pass = "joint"'),
            r"model\.layout: the joint VAE",
        ),
        (
            ('name = "fg2"', 'name = "fg 2"'),
            r"model\.layout\.layers\[1\]: layer name must be a non-empty identifier",
        ),
    ],
)
def test_bad_layout_tables_name_the_dotted_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(LAYOUT.replace(*change, 1))
    with pytest.raises(ConfigError, match=message):
        load_config(path, 1)


def test_per_sample_mixing_refuses_decompose_with_other_tasks(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[objective]\ntask_mixing = 'per_sample'\n")
    with pytest.raises(ConfigError, match="objective.task_mixing.*decompose"):
        load_config(path, 1)
    path.write_text(
        "[objective]\ntask_mixing = 'per_sample'\n[objective.tasks]\ngenerate = 1.0\ndecompose = 0.0\n"
    )
    assert load_config(path, 1).objective.task_mixing == "per_sample"


def test_yaml_config_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  batch_size: 3\nstage:\n  '2':\n    optim:\n      learning_rate: 0.002\n")
    assert load_config(path, 1).optim.batch_size == 3
    assert load_config(path, 1).learning_rate == 1e-4
    config = load_config(path, 2, parse_override("run.max_steps=7"))
    assert (config.learning_rate, config.run.max_steps) == (0.002, 7)
    assert parse_override("model.base=/some/dir") == {"model": {"base": "/some/dir"}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("no-equals")


def test_unreadable_files_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", 1)
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=".toml, .yaml or .yml"):
        load_config(tmp_path / "c.json", 1)
    (tmp_path / "c.toml").write_text("[optim\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "c.toml", 1)
