import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from umm_plugin.models.generation import SamplingConfig, generate_image_tokens
from umm_plugin.models.umm import UMM, ModelError

GREEDY = SamplingConfig(temperature=0)


def test_save_load_is_one_hf_directory_with_a_stock_qwen2_backbone(tiny_umm, tmp_path):
    m = tiny_umm
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.rglob("*.bin"))
    backbone = AutoModelForCausalLM.from_pretrained(tmp_path)  # no trust_remote_code
    assert type(backbone).__name__ == "Qwen2ForCausalLM"
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.convert_tokens_to_ids("<img_0>") == m.layout.image_offset
    assert len(tok) == m.backbone.config.vocab_size == m.layout.image_offset + m.layout.num_codes

    again = UMM.from_pretrained(tmp_path)
    rows = [m.generation_prompt("a photo of a red circle")]
    a = generate_image_tokens(m.backbone, m.layout, rows, sampling=GREEDY)
    assert torch.equal(a, generate_image_tokens(again.backbone, again.layout, rows, sampling=GREEDY))
    assert again.layout == m.layout


def test_image_layout_follows_x_omni_with_a_row_end_token(tiny_umm):
    lay = tiny_umm.layout
    codes = torch.arange(64) * 3 % lay.num_codes
    toks = tiny_umm.tokenizer.convert_ids_to_tokens(lay.wrap(codes))
    assert toks[:4] == ["<SOM>", "8", "8", "<IMAGE>"] and toks[-1] == "<EOM>" and len(toks) == 4 + 72 + 1
    rows = [toks[4 + 9 * r : 4 + 9 * (r + 1)] for r in range(8)]
    assert rows[1] == [f"<img_{int(c)}>" for c in codes[8:16]] + ["<EOL>"]
    assert all(r[-1] == "<EOL>" and "<EOL>" not in r[:-1] for r in rows)
    assert torch.equal(lay.codes(lay.tokens(codes)), codes)
    assert lay.spread(range(64), -1)[7:10] == [7, -1, 8] and len(lay.spread(range(64))) == lay.length

    bad = lay.tokens(codes)
    bad[3], bad[8] = bad[8], bad[3]  # a row end out of place
    with pytest.raises(ModelError, match="8 rows of 8 codes each ended by <EOL>"):
        lay.codes(bad)
    with pytest.raises(ModelError, match="got 71 tokens"):
        lay.codes(lay.tokens(codes)[:-1])
    text = lay.tokens(codes)
    text[0] = tiny_umm.tokenizer.eos_token_id
    with pytest.raises(ModelError, match="outside the image vocabulary"):
        lay.codes(text)


def test_unknown_words_and_empty_prompts_are_errors_not_unk(tiny_umm):
    with pytest.raises(ModelError, match="unknown word 'zebra'"):
        tiny_umm.ids("a photo of a zebra")
    with pytest.raises(ModelError, match="empty prompt"):
        tiny_umm.generation_prompt("   ")


def test_missing_and_corrupt_directories_are_named(tiny_umm, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        UMM.from_pretrained(tmp_path / "nope")
    tiny_umm.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="cannot load the backbone"):
        UMM.from_pretrained(tmp_path)
    (tmp_path / "umm_config.json").write_text("{")
    with pytest.raises(ModelError, match="umm_config.json is not valid JSON"):
        UMM.from_pretrained(tmp_path)
    (tmp_path / "umm_config.json").write_text(json.dumps({"format": "umm-plugin/1"}))
    with pytest.raises(ModelError, match="format 'umm-plugin/1'.*pretrain it again"):
        UMM.from_pretrained(tmp_path)


def test_claim_dir_adopts_new_empty_or_own_directories_and_refuses_others(tmp_path):
    from umm_plugin.models.umm import MARKER, claim_dir

    assert (claim_dir(tmp_path / "new" / "run") / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert (claim_dir(tmp_path / "empty") / MARKER).is_file()
    (tmp_path / "new" / "run" / "policy").mkdir()
    claim_dir(tmp_path / "new" / "run")  # its own directory, files and all: a rerun may write there
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match="holds files umm-plugin did not write"):
        claim_dir(user)
    assert sorted(p.name for p in user.iterdir()) == ["config.json"]  # no marker left behind either
    with pytest.raises(ModelError, match="is a file"):
        claim_dir(user / "config.json")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "gpt2", "n_embd": 768}, "model_type 'gpt2', a ShapesWorld backbone is qwen2"),
        (  # a real-size qwen2 config: refused from its shapes on the meta device, nothing allocated
            {"model_type": "qwen2", "hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 150000},
            "M-parameter backbone; a ShapesWorld model has about 1 M",
        ),
    ],
)
def test_from_pretrained_checks_the_backbone_config_before_building_it(tmp_path, config, message):
    from umm_plugin.models.umm import FORMAT

    (tmp_path / "umm_config.json").write_text(json.dumps({"format": FORMAT}))
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("")
    with pytest.raises(ModelError, match=message):
        UMM.from_pretrained(tmp_path)


def test_save_atomically_replaces_a_model_only_once_the_new_one_is_complete(tmp_path):
    from umm_plugin.models.umm import save_atomically

    class Writer:  # what save_atomically is given: anything with save_pretrained(path)
        def __init__(self, text, fail=False):
            self.text, self.fail = text, fail

        def save_pretrained(self, path):
            path.mkdir()
            (path / "weights").write_text(self.text)
            if self.fail:
                raise OSError("disk full")

    final = tmp_path / "policy"
    save_atomically(Writer("one"), final)
    save_atomically(Writer("two"), final)
    assert (final / "weights").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    with pytest.raises(OSError, match="disk full"):
        save_atomically(Writer("three", fail=True), final)
    assert (final / "weights").read_text() == "two"  # a failed save never touches the last good one


def test_weights_with_nan_are_named_at_load(tiny_umm, tmp_path):
    tiny_umm.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "model.safetensors")
    name = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=f"weight {name} holds NaN or inf"):
        UMM.from_pretrained(tmp_path)
