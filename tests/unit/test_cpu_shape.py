"""bench.cpu_shape writes one random model twice: the engine's folder and llama.cpp's GGUF must hold the same model."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench.cpu_shape import shaped_adapter, shaped_weights, write_gguf, write_hf
from service.config import Settings
from service.model import resolve_model

# A small model with Mistral's proportions: grouped query heads (4 query heads share 2 key/value heads).
SHAPE = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "rope_theta": 1_000_000.0}


def test_the_folder_and_the_gguf_compute_the_same_logits(tmp_path):
    weights = shaped_weights(SHAPE, 2, 49152, seed=7)
    write_hf(tmp_path / "hf", Path(resolve_model(None, Settings().cache_dir)), SHAPE, 2, weights)
    write_gguf(tmp_path / "model.BF16.gguf", SHAPE, 2, weights)

    folder = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.BF16.gguf", dtype=torch.float32)
    assert gguf.config.num_key_value_heads == 2 and gguf.config.hidden_size == 64
    ids = torch.tensor([[1, 500, 7000, 31, 2048, 49000, 12, 9]])
    with torch.no_grad():
        expected, got = folder(ids).logits, gguf(ids).logits
    # Rows out of rotary order would change every position after the first.
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
    assert expected.argmax(-1).tolist() == got.argmax(-1).tolist()


def test_different_seeds_give_different_models():
    a, b = shaped_weights(SHAPE, 1, 100, seed=1), shaped_weights(SHAPE, 1, 100, seed=2)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    assert a["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)


def test_the_shaped_adapter_fits_the_shaped_model_and_changes_its_output(tmp_path):
    from peft import PeftModel

    write_hf(tmp_path / "hf", Path(resolve_model(None, Settings().cache_dir)), SHAPE, 2,
             shaped_weights(SHAPE, 2, 49152, seed=7))
    like = Path(__file__).resolve().parents[2] / "adapters" / "flow-general"
    adapter = shaped_adapter(tmp_path / "adapter", tmp_path / "hf", like=like)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ids = torch.tensor([[1, 500, 7000, 31]])
    with torch.no_grad():
        before = model(ids).logits
        tuned = PeftModel.from_pretrained(model, adapter)
        after = tuned(ids).logits
    # Every target module of flow-general has its matrices: peft loads them all, none missing.
    assert len([n for n in tuned.state_dict() if "lora_A" in n]) == 2 * 7
    assert not torch.allclose(before, after)
