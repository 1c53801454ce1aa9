"""Token Prepending against a hand-written layer-by-layer reference, on several architectures."""

import pytest
import torch

from tp_rag import Encoder, EncoderConfig
from tp_rag.batching import build_rows, pad
from tp_rag.prompts import render_template
from tp_rag.testing import tiny_model, tiny_tokenizer

ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3"]
TEXT = "A man is playing a guitar on the street."


def prompt_ids(tokenizer, text, with_pst, pst_id=0):
    """PromptEOL tokenised piece by piece, independently of tp_rag.prompts."""
    def plain(s):
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    bos = [tokenizer.bos_token_id]
    if with_pst:
        head = bos + plain("This sentence :")
        ids = head + [pst_id] + plain(' "') + plain(text) + plain('" means in one word:"')
        return ids, len(head)
    return bos + plain('This sentence : "') + plain(text) + plain('" means in one word:"'), None


@torch.no_grad()
def reference_embedding(model, ids, pst, tp_start, tp_exit, output_layer, pst_vector):
    """The method written out: call each decoder layer by hand, overwrite the placeholder with
    the last token's state before layers tp_start..tp_exit-1, stop after output_layer."""
    base = model.model
    config = model.config
    n = len(ids)
    hidden = base.embed_tokens(torch.tensor([ids]))
    if pst is not None:
        hidden[0, pst] = pst_vector
    positions = torch.arange(n)[None]
    causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
    depth = len(base.layers)
    for i, layer in enumerate(base.layers):
        if pst is not None and tp_start <= i < tp_exit:
            hidden = hidden.clone()
            hidden[0, pst] = hidden[0, -1]
        if config.model_type == "gemma3_text":
            rotary = base.rotary_emb(hidden, positions, config.layer_types[i])
        else:
            rotary = base.rotary_emb(hidden, positions)
        out = layer(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rotary)
        hidden = out[0] if isinstance(out, tuple) else out
        if i + 1 == output_layer:
            return (base.norm(hidden) if output_layer == depth else hidden)[0, -1]
    raise AssertionError("output layer never reached")


def make_encoder(model, **settings):
    config = EncoderConfig(model="tiny", device="cpu", normalize=False, **settings)
    return Encoder.from_model(model, tiny_tokenizer(), config)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_layer", [2, 4])
def test_tp_matches_reference(arch, output_layer):
    model = tiny_model(arch, num_layers=4)
    encoder = make_encoder(model, tp_start=1, tp_exit=3, output_layer=output_layer, pst_init="zeros")
    ids, pst = prompt_ids(tiny_tokenizer(), TEXT, with_pst=True)
    expected = reference_embedding(model, ids, pst, 1, 3, output_layer, torch.zeros(32))
    got = torch.from_numpy(encoder.encode([TEXT])[0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tp_changes_the_embedding(arch):
    """Guard against a reference and an encoder that are both silently vanilla."""
    model = tiny_model(arch)
    ids, pst = prompt_ids(tiny_tokenizer(), TEXT, with_pst=True)
    with_tp = reference_embedding(model, ids, pst, 1, 3, 4, torch.zeros(32))
    without = reference_embedding(model, ids, pst, 0, 0, 4, torch.zeros(32))
    assert (with_tp - without).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mean_pst_init_is_mean_input_embedding(arch):
    model = tiny_model(arch)
    encoder = make_encoder(model, tp_start=1, tp_exit=3, output_layer=-1, pst_init="mean")
    embed = model.model.embed_tokens
    mean = embed(torch.arange(embed.weight.shape[0])).mean(0).detach()
    ids, pst = prompt_ids(tiny_tokenizer(), TEXT, with_pst=True)
    expected = reference_embedding(model, ids, pst, 1, 3, 4, mean)
    torch.testing.assert_close(torch.from_numpy(encoder.encode([TEXT])[0]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("output_layer", [1, 3, -1])
def test_vanilla_equals_plain_hidden_states(arch, output_layer):
    model = tiny_model(arch)
    encoder = make_encoder(model, token_prepending=False, output_layer=output_layer)
    ids, _ = prompt_ids(tiny_tokenizer(), TEXT, with_pst=False)
    with torch.no_grad():
        states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(
        torch.from_numpy(encoder.encode([TEXT])[0]), states[output_layer][0, -1], atol=1e-5, rtol=1e-5
    )


def test_tp_exit_beyond_output_layer_does_not_matter():
    """Overwrites scheduled after the output layer never run."""
    model = tiny_model("llama")
    a = make_encoder(model, tp_start=1, tp_exit=2, output_layer=2).encode([TEXT])
    b = make_encoder(model, tp_start=1, tp_exit=4, output_layer=2).encode([TEXT])
    torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b))


TEXTS = ["hi", "A man is playing a guitar on the street.", "Cats sleep.", "What is the capital of France?"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pst_and_last_positions_under_padding(side):
    tokenizer = tiny_tokenizer()
    template = render_template(tokenizer, 'This sentence : <PST> "{text}" means in one word:"', True)
    text_ids = tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    pst_id = 3  # an id that appears nowhere else in these rows
    rows = build_rows(text_ids, [template], max_length=512, pst_id=pst_id)
    batch = pad(rows, pad_id=0, side=side)
    suffix_end = template.suffix[-1]
    for r, row in enumerate(rows):
        assert batch.input_ids[r, batch.pst_index[r]] == pst_id
        assert (batch.input_ids[r] == pst_id).sum() == 1
        assert batch.input_ids[r, batch.last_index[r]] == suffix_end
        assert batch.attention_mask[r].sum() == len(row.ids)
    if side == "left":
        assert (batch.last_index == batch.input_ids.shape[1] - 1).all()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_left_and_right_padding_give_the_same_vectors(arch):
    """Left padding is the default because every last token sits in the last column; right
    padding must agree, which shows the positions are right on both sides."""
    encoder = make_encoder(tiny_model(arch), tp_start=1, tp_exit=3)
    tokenizer = tiny_tokenizer()
    templates = encoder._rendered("text")
    rows = build_rows(tokenizer(TEXTS, add_special_tokens=False)["input_ids"], templates, 512, encoder.pad_id)
    runner, layer = encoder._runner, encoder.output_layer
    left = runner.embedding_states(pad(rows, encoder.pad_id, "left"), layer, (1, 3))
    right = runner.embedding_states(pad(rows, encoder.pad_id, "right"), layer, (1, 3))
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    alone = torch.from_numpy(encoder.encode(TEXTS))
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


def count_layer_calls(layers):
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    return calls, handles


@pytest.mark.parametrize("output_layer", [1, 2, 3])
def test_early_exit_skips_later_layers_and_head(output_layer):
    model = tiny_model("llama", num_layers=4)
    encoder = make_encoder(model, tp_start=1, tp_exit=2, output_layer=output_layer)
    calls, handles = count_layer_calls(model.model.layers)
    norm_calls = []
    handles.append(model.model.norm.register_forward_hook(lambda *a: norm_calls.append(1)))
    handles.append(model.lm_head.register_forward_hook(lambda *a: norm_calls.append("head")))
    encoder.encode(TEXTS, batch_size=2)
    # the template prefix once (its cache, only as deep as the output layer), then two
    # batches: layers 0..k-1 each time
    assert calls == list(range(output_layer)) * 3
    calls.clear()
    encoder.encode(TEXTS, batch_size=2)  # the prefix is cached now
    encoder.prefix_cache = False
    encoder.encode(TEXTS, batch_size=2)
    for handle in handles:
        handle.remove()
    assert calls == list(range(output_layer)) * 4
    assert norm_calls == []  # neither the final norm nor the LM head ran


def test_all_layers_pass_agrees_with_each_output_layer():
    model = tiny_model("qwen2", num_layers=4)
    encoder = make_encoder(model, tp_start=1, tp_exit=3)
    every = encoder.encode_all_layers(TEXTS)
    assert every.shape == (4, len(TEXTS), 32)
    for k in range(1, 5):
        single = make_encoder(model, tp_start=1, tp_exit=3, output_layer=k).encode(TEXTS)
        torch.testing.assert_close(torch.from_numpy(every[k - 1]), torch.from_numpy(single), atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_after_encoding():
    model = tiny_model("llama")
    encoder = make_encoder(model, tp_start=1, tp_exit=3, output_layer=2)
    encoder.encode(TEXTS)
    for layer in model.model.layers:
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    with torch.no_grad():  # the model itself is untouched: plain forwards are vanilla again
        model(torch.tensor([[2, 5, 6]]))
