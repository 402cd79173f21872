import pytest
import torch

from layer_embeddings import LayerEmbedder, LayerPromptEncoder, format_layer_prompt

MAX_LEN = 12


def encode_one(text_encoder, tokenizer, text):
    ids = tokenizer(
        [text], padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return text_encoder(ids)[0][0]


@pytest.fixture
def encoder(text_encoder, tokenizer):
    return LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN)


def test_shape_and_layer_blocks_match_separate_encoding(encoder, text_encoder, tokenizer):
    prompts = [
        ["a red fox", "blue sky", "fox in front of the sky"],
        ["green circle", "sky", "circle in the sky"],
    ]
    out = encoder.encode_text(prompts)
    assert out.embeddings.shape == (2, 3 * MAX_LEN, 32)
    assert out.layer_ids.tolist() == [0] * MAX_LEN + [1] * MAX_LEN + [2] * MAX_LEN
    for b, sample in enumerate(prompts):
        for layer, text in enumerate(sample):
            expected = encode_one(text_encoder, tokenizer, format_layer_prompt(layer, text))
            block = out.embeddings[b, layer * MAX_LEN : (layer + 1) * MAX_LEN]
            torch.testing.assert_close(block, expected, rtol=1e-5, atol=1e-5)


def test_single_sample_is_a_batch_of_one(encoder):
    one = encoder.encode_text(["a red fox", "blue sky"])
    batch = encoder.encode_text([["a red fox", "blue sky"]])
    torch.testing.assert_close(one.embeddings, batch.embeddings)


def test_batched_call_uses_one_tokenizer_and_one_encoder_call(text_encoder, tokenizer):
    calls = {"encoder": 0}

    def count(*_):
        calls["encoder"] += 1

    handle = text_encoder.register_forward_hook(count)
    try:
        LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN).encode_text(
            [["a", "b"], ["c", "d"], ["e", "f"]]
        )
    finally:
        handle.remove()
    assert calls["encoder"] == 1


def test_layer_embeddings_land_only_on_their_token_block(text_encoder, tokenizer):
    embedder = LayerEmbedder(3, 32)
    plain = LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN).encode_text(
        ["fox", "sky", "both"]
    )
    with_layers = LayerPromptEncoder(
        text_encoder, tokenizer, max_length=MAX_LEN, layer_embedder=embedder
    ).encode_text(["fox", "sky", "both"])
    delta = (with_layers.embeddings - plain.embeddings)[0]
    table = embedder.layer_table().detach()
    for layer in range(3):
        block = delta[layer * MAX_LEN : (layer + 1) * MAX_LEN]
        torch.testing.assert_close(block, table[layer].expand_as(block))


def test_zero_init_embedder_is_identity(text_encoder, tokenizer):
    kwargs = dict(max_length=MAX_LEN)
    plain = LayerPromptEncoder(text_encoder, tokenizer, **kwargs).encode_text(["fox", "sky"])
    zero = LayerEmbedder(2, 32, kind="linear", zero_init=True)
    out = LayerPromptEncoder(text_encoder, tokenizer, layer_embedder=zero, **kwargs).encode_text(
        ["fox", "sky"]
    )
    assert torch.equal(out.embeddings, plain.embeddings)


def test_unconditional_zeros_is_official_parity(text_encoder, tokenizer):
    encoder = LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN, unconditional="zeros")
    out = encoder.encode_text([["fox", None, "both"]])
    assert torch.count_nonzero(out.embeddings[0, MAX_LEN : 2 * MAX_LEN]) == 0
    assert torch.count_nonzero(out.attention_mask[0, MAX_LEN : 2 * MAX_LEN]) == 0
    assert torch.count_nonzero(out.embeddings[0, :MAX_LEN]) > 0
    reference = encoder.encode_text([["fox", "sky", "both"]])
    torch.testing.assert_close(out.embeddings[0, :MAX_LEN], reference.embeddings[0, :MAX_LEN])


def test_unconditional_empty_string_encodes_the_empty_prompt(text_encoder, tokenizer):
    encoder = LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN, unconditional="empty_string")
    out = encoder.encode_text([[None, "sky"]])
    expected = encode_one(text_encoder, tokenizer, "0, ")
    torch.testing.assert_close(out.embeddings[0, :MAX_LEN], expected, rtol=1e-5, atol=1e-5)


def test_deterministic(encoder):
    a = encoder.encode_text(["a red fox", "sky"]).embeddings
    b = encoder.encode_text(["a red fox", "sky"]).embeddings
    assert torch.equal(a, b)


def test_dtype_and_device(encoder):
    out = encoder(["fox", "sky"], device=torch.device("cpu"), dtype=torch.float64)
    assert out.embeddings.dtype == torch.float64 and out.embeddings.device.type == "cpu"
    assert out.layer_ids.dtype == torch.int64


def test_without_prefix_tokenizes_prompts_verbatim(text_encoder, tokenizer):
    encoder = LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN, add_index_prefix=False)
    out = encoder.encode_text(["0, fox"])
    torch.testing.assert_close(
        out.embeddings[0], encode_one(text_encoder, tokenizer, "0, fox"), rtol=1e-5, atol=1e-5
    )


def test_truncation_is_explicit(text_encoder, tokenizer, caplog):
    long_prompt = " ".join(["fox"] * 40)
    strict = LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN, truncation=False)
    with pytest.raises(ValueError, match="sample 0 layer 1"):
        strict.encode_text(["fox", long_prompt])
    lenient = LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN)
    with caplog.at_level("WARNING"):
        out = lenient.encode_text(["fox", long_prompt])
    assert out.embeddings.shape[1] == 2 * MAX_LEN
    assert "sample 0 layer 1" in caplog.text


@pytest.mark.parametrize(
    ("prompts", "error", "match"),
    [
        ("a red fox", ValueError, "list of layer prompts"),
        ([], ValueError, "list of layer prompts"),
        ([["fox", "sky"], ["fox"]], ValueError, "sample 1 has 1 layer prompts, sample 0 has 2"),
        ([["fox", 3]], TypeError, "sample 0, layer 1"),
    ],
)
def test_bad_prompts(encoder, prompts, error, match):
    with pytest.raises(error, match=match):
        encoder.encode_text(prompts)


def test_too_many_layers_for_embedder(text_encoder, tokenizer):
    encoder = LayerPromptEncoder(
        text_encoder, tokenizer, max_length=MAX_LEN, layer_embedder=LayerEmbedder(2, 32)
    )
    with pytest.raises(ValueError, match="3 layer prompts but the layer embedder knows 2"):
        encoder.encode_text(["a", "b", "c"])


def test_embedder_width_mismatch_fails_at_construction(text_encoder, tokenizer):
    with pytest.raises(ValueError, match="dim 16 != text encoder width 32"):
        LayerPromptEncoder(text_encoder, tokenizer, max_length=MAX_LEN, layer_embedder=LayerEmbedder(2, 16))
