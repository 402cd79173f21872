import pytest

from layer_embeddings import format_layer_prompt, format_layer_prompts, parse_layer_prompt


def test_format_matches_official_convention():
    assert format_layer_prompt(0, "a red fox") == "0, a red fox"
    assert format_layer_prompt(2, "  a fox over the sky ") == "2, a fox over the sky"


def test_parse_inverts_format():
    for index, text in [(0, "a red fox"), (11, "x, y, z"), (1, "")]:
        assert parse_layer_prompt(format_layer_prompt(index, text)) == (index, text)


def test_format_many_keeps_none_for_unconditional_layers():
    assert format_layer_prompts(["fox", None, "both"]) == ["0, fox", None, "2, both"]


@pytest.mark.parametrize(
    ("index", "text", "num_layers", "error", "match"),
    [
        (-1, "fox", None, ValueError, ">= 0"),
        (3, "fox", 3, ValueError, "out of range for 3 layers"),
        (1.0, "fox", None, TypeError, "must be an int"),
        (True, "fox", None, TypeError, "must be an int"),
        (0, None, None, TypeError, "layer 0 must be a str"),
        (1, 5, None, TypeError, "layer 1 must be a str"),
    ],
)
def test_format_rejects_bad_input(index, text, num_layers, error, match):
    with pytest.raises(error, match=match):
        format_layer_prompt(index, text, num_layers=num_layers)


def test_parse_rejects_unprefixed_prompt():
    with pytest.raises(ValueError, match="not a layer prompt"):
        parse_layer_prompt("a red fox")


def test_format_many_rejects_single_string():
    with pytest.raises(TypeError, match="one prompt per layer"):
        format_layer_prompts("a red fox")
