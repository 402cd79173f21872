import pytest
import torch
from torch import nn

from layer_embeddings import OFFICIAL_PREFIX, LayerEmbedder, layer_token_ids


@pytest.mark.parametrize("kind", ["table", "linear"])
def test_shapes_and_gather(kind):
    embedder = LayerEmbedder(3, 16, kind=kind)
    ids = torch.tensor([[0, 1], [2, 2]])
    out = embedder(ids)
    assert out.shape == (2, 2, 16)
    table = embedder.layer_table()
    torch.testing.assert_close(out[1, 0], table[2])
    torch.testing.assert_close(out[0, 1], table[1])


def test_linear_kind_is_layernorm_of_linear_of_index():
    torch.manual_seed(0)
    embedder = LayerEmbedder(4, 8, kind="linear")
    linear, norm = embedder.embed[0], embedder.embed[1]
    for i in range(4):
        expected = nn.functional.layer_norm(
            linear.weight[:, 0] * float(i) + linear.bias, (8,), norm.weight, norm.bias
        )
        torch.testing.assert_close(embedder(torch.tensor(i)), expected)


@pytest.mark.parametrize("kind", ["table", "linear"])
def test_zero_init_is_identity(kind):
    embedder = LayerEmbedder(3, 8, kind=kind, zero_init=True)
    assert torch.count_nonzero(embedder(torch.arange(3))) == 0
    text = torch.randn(2, 3 * 5, 8)
    torch.testing.assert_close(text + embedder.token_embeddings(5), text, rtol=0, atol=0)


def test_zero_init_still_trains():
    embedder = LayerEmbedder(2, 4, kind="linear", zero_init=True)
    embedder(torch.tensor([0, 1])).sum().backward()
    assert embedder.embed[1].bias.grad is not None and embedder.embed[1].bias.grad.abs().sum() > 0


def test_token_embeddings_follow_layer_blocks():
    embedder = LayerEmbedder(3, 4)
    tokens = embedder.token_embeddings(tokens_per_layer=5)
    assert tokens.shape == (15, 4)
    torch.testing.assert_close(tokens, embedder(layer_token_ids(3, 5)))
    assert torch.equal(tokens[5], embedder.layer_table()[1]) and torch.equal(tokens[9], tokens[5])


def test_layer_token_ids():
    assert layer_token_ids(2, 3).tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="tokens_per_layer >= 1"):
        layer_token_ids(2, 0)


def test_official_state_dict_loads_by_name():
    source = nn.Sequential(nn.Linear(1, 6), nn.LayerNorm(6))
    state = {OFFICIAL_PREFIX + k: v for k, v in source.state_dict().items()}
    state["model.diffusion_model.other.weight"] = torch.zeros(1)
    embedder = LayerEmbedder(3, 6, kind="linear")
    embedder.load_official_state_dict(state)
    torch.testing.assert_close(embedder(torch.tensor(2)), source(torch.tensor([2.0])))


def test_official_state_dict_errors_name_the_keys():
    embedder = LayerEmbedder(3, 6, kind="linear")
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    with pytest.raises(KeyError, match=r"txt_embedder\.1\.bias"):
        embedder.load_official_state_dict({OFFICIAL_PREFIX + "0.weight": torch.zeros(6, 1)})
    bad = {OFFICIAL_PREFIX + k: torch.zeros(7, *v.shape[1:]) for k, v in embedder.embed.state_dict().items()}
    with pytest.raises(ValueError, match=r"0\.weight: expected \(6, 1\), got \(7, 1\)"):
        embedder.load_official_state_dict(bad)
    for k, v in embedder.state_dict().items():
        assert torch.equal(v, before[k]), "nothing may be loaded on failure"
    with pytest.raises(ValueError, match="kind='linear'"):
        LayerEmbedder(3, 6).load_official_state_dict({})


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        (torch.tensor([3]), ValueError, "layer id 3 is out of range for 3 layers"),
        (torch.tensor([-1]), ValueError, "layer id -1"),
        (torch.tensor([0.0]), TypeError, "integer tensor"),
    ],
)
def test_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        LayerEmbedder(3, 4)(ids)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_layers": 0, "dim": 4}, "num_layers"),
        ({"num_layers": 2, "dim": 0}, "dim"),
        ({"num_layers": 2, "dim": 4, "kind": "mlp"}, "kind"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerEmbedder(**kwargs)


@pytest.mark.parametrize("kind", ["table", "linear"])
def test_dtype_follows_parameters(kind):
    embedder = LayerEmbedder(3, 8, kind=kind).to(torch.float64)
    assert embedder(torch.tensor([0, 2])).dtype == torch.float64
