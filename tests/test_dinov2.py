"""Our DINOv2-with-registers equals transformers' `Dinov2WithRegistersModel` on the same random
weights, imports HF (both namings), timm and DVT files, and exports HF directories transformers loads."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F
import transformers
from flax import nnx

from ovs_jax import sharding
from ovs_jax.interchange import dinov2 as dinov2_io
from ovs_jax.interchange.errors import CheckpointError
from ovs_jax.models import dinov2, pos_embed

TINY = "dinov2_reg_tiny"  # 64 wide, 2 layers, 2 heads, patch 14, native 224 (16×16 grid)
# Native, and non-square non-native grids: 7×11 shrinks both sides (antialiased), 18×13 enlarges one
# (and drops the pixels past the last whole patch, as the conv does).
SIZES = ((224, 224), (98, 154), (256, 190))


def hf_config(cfg):
  return transformers.Dinov2WithRegistersConfig(**{k: v for k, v in dinov2.to_hf_dict(cfg).items()
                                                   if k not in ("architectures", "model_type")})


@pytest.fixture(scope="module")
def hf_tiny():
  torch.manual_seed(0)
  model = transformers.Dinov2WithRegistersModel(hf_config(dinov2.get_preset(TINY))).eval()
  with torch.no_grad():  # away from the init's symmetries (zero registers and biases, unit gains)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def hf_state_dict(hf):
  return {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}


def legacy_names(sd):
  """Today's names -> those of HF files saved before transformers 5 (written out independently)."""
  old = {"q_proj": "attention.query", "k_proj": "attention.key", "v_proj": "attention.value",
         "o_proj": "output.dense"}
  out = {}
  for k, v in sd.items():
    parts = k.split(".")
    if len(parts) == 6 and parts[3] == "attention":
      k = ".".join(parts[:4] + [old[parts[4]], parts[5]])
    out[k] = v
  return out


def timm_layout(sd, layers):
  """HF state dict -> timm `vit_base_patch14_reg4_dinov2` state dict as timm's `_convert_dinov2`
  writes it: no mask token, the class slot of the position table folded into `cls_token`
  (`no_embed_class`), q/k/v fused into `attn.qkv`, layer scales as `ls{1,2}.gamma`."""
  pos = sd["embeddings.position_embeddings"]
  out = {"cls_token": sd["embeddings.cls_token"] + pos[:, :1], "reg_token": sd["embeddings.register_tokens"],
         "pos_embed": pos[:, 1:], "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
  for kind in ("weight", "bias"):
    out[f"patch_embed.proj.{kind}"] = sd[f"embeddings.patch_embeddings.projection.{kind}"]
  for i in range(layers):
    hf, t = f"encoder.layer.{i}.", f"blocks.{i}."
    for kind in ("weight", "bias"):
      out[t + f"attn.qkv.{kind}"] = np.concatenate([sd[hf + f"attention.{p}_proj.{kind}"] for p in "qkv"])
      out[t + f"attn.proj.{kind}"] = sd[hf + f"attention.o_proj.{kind}"]
      for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
        out[t + f"{name}.{kind}"] = sd[hf + f"{name}.{kind}"]
    out[t + "ls1.gamma"] = sd[hf + "layer_scale1.lambda1"]
    out[t + "ls2.gamma"] = sd[hf + "layer_scale2.lambda1"]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def pixels(size, batch=2, seed=0):
  return np.random.RandomState(seed).randn(batch, 3, *size).astype(np.float32)


def reference(hf, px):
  with torch.no_grad():
    out = hf(pixel_values=torch.tensor(px))
  b, _, h, w = px.shape
  r = hf.config.num_register_tokens
  patches = out.last_hidden_state[:, 1 + r:].reshape(b, h // 14, w // 14, -1)
  return [out.last_hidden_state.numpy(), out.pooler_output.numpy(), patches.numpy()]


_forward = nnx.jit(lambda m, x: tuple(m(x)))


def ours(model, px):
  return [np.asarray(a) for a in _forward(model, jnp.asarray(px.transpose(0, 2, 3, 1)))]


def assert_close(a, b, tol=1e-4):
  for x, y, name in zip(a, b, ("last_hidden_state", "pooler_output", "patch_tokens")):
    assert x.shape == y.shape, name
    np.testing.assert_allclose(x, y, atol=tol, rtol=0, err_msg=name)


def from_hf(hf, **model_kw):
  model = dinov2.abstract_model(dinov2.from_hf_dict(hf.config.to_dict()), **model_kw)
  dinov2_io.import_backbone(model, hf_state_dict(hf), source="hf")
  return model


def test_matches_transformers_at_native_and_resampled_sizes(hf_tiny):
  model = from_hf(hf_tiny)
  for size in SIZES:
    px = pixels(size)
    assert_close(ours(model, px), reference(hf_tiny, px))


def test_scan_remat_and_bfloat16(hf_tiny):
  px = pixels(SIZES[1])
  plain = ours(from_hf(hf_tiny), px)
  for kw in (dict(scan=True, remat=True), dict(remat=True)):
    assert_close(ours(from_hf(hf_tiny, **kw), px), plain, tol=1e-6)
  graphdef, state = nnx.split(from_hf(hf_tiny, scan=True, remat=True))
  grads = jax.grad(lambda s: nnx.merge(graphdef, s)(jnp.asarray(px.transpose(0, 2, 3, 1))).patch_tokens.sum())(state)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  half = ours(from_hf(hf_tiny, dtype=jnp.bfloat16), px)[2].astype(np.float32)
  cos = (half * plain[2]).sum(-1) / np.linalg.norm(half, axis=-1) / np.linalg.norm(plain[2], axis=-1)
  assert cos.min() > 0.99, cos.min()


def test_full_size_vit_b14_reg4_has_transformers_parameters():
  cfg = dinov2.get_preset("vit_base_patch14_reg4_dinov2")
  assert dinov2.from_hf_dict(hf_config(cfg).to_dict()) == cfg
  model = dinov2.abstract_model(cfg)
  with torch.device("meta"):
    hf = transformers.Dinov2WithRegistersModel(hf_config(cfg))
  ours_shapes = {k.replace("encoder.layers.", "encoder.layer.").replace(".out_proj.", ".o_proj."): s
                 for k, s in dinov2_io.expected_shapes(model).items()}
  assert ours_shapes == {k: tuple(v.shape) for k, v in hf.state_dict().items()}
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  d, f, g = 768, 3072, 37
  embeddings = d * (1 + 1 + 4 + g * g + 1) + d * 3 * 14 * 14 + d  # cls, mask, registers, positions, patches
  block = 4 * d + 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d)  # norms, q/k/v/o, layer scales, MLP
  assert n == sum(p.numel() for p in hf.parameters()) == embeddings + 12 * block + 2 * d == 86_583_552
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                       jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert out.last_hidden_state.shape == (1, 1 + 4 + 256, 768)
  assert out.patch_tokens.shape == (1, 16, 16, 768) and out.pooler_output.shape == (1, 768)


def test_logical_axes_shard_every_large_parameter():
  state = nnx.state(dinov2.abstract_model(dinov2.get_preset("vit_base_patch14_reg4_dinov2", dvt_denoiser=True),
                                          scan=True), nnx.Param)
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  shardings = sharding.param_shardings(state, mesh)
  assert sharding.replicated_parameters(nnx.to_pure_dict(state), shardings) == []
  fc1 = shardings["encoder"]["layers"]["mlp"]["fc1"]["kernel"].spec
  assert tuple(fc1) == (None, "fsdp", "tensor")  # (layers, embed, mlp)


def test_imports_legacy_hf_names_and_timm_layout(hf_tiny, tmp_path):
  sd = hf_state_dict(hf_tiny)
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  hf_tiny.config.to_json_file(legacy / "config.json")
  # As `Dinov2WithRegistersForImageClassification` saved it: backbone prefix, and a head we drop.
  classifier = {f"dinov2_with_registers.{k}": torch.tensor(v) for k, v in legacy_names(sd).items()}
  torch.save(dict(classifier, **{"classifier.weight": torch.zeros(10, 128)}), legacy / "pytorch_model.bin")
  timm_file = tmp_path / "timm.safetensors"
  safetensors.numpy.save_file(timm_layout(sd, 2), str(timm_file))
  timm_hub = tmp_path / "timm_hub"  # a timm hub directory: its config.json names the architecture
  timm_hub.mkdir()
  (timm_hub / "config.json").write_text('{"architecture": "dinov2_reg_tiny", "num_classes": 0}')
  safetensors.numpy.save_file(timm_layout(sd, 2), str(timm_hub / "model.safetensors"))
  px = pixels(SIZES[2], batch=1)
  ref = reference(hf_tiny, px)
  assert_close(ours(dinov2_io.load_dinov2(legacy), px), ref)
  assert_close(ours(dinov2_io.load_dinov2(timm_file, arch=TINY), px), ref)
  assert_close(ours(dinov2_io.load_dinov2(timm_hub), px), ref)


def test_export_round_trip_through_transformers(hf_tiny, tmp_path):
  model = from_hf(hf_tiny)
  dinov2_io.save_hf_dinov2(model, tmp_path / "hf")
  back = transformers.Dinov2WithRegistersModel.from_pretrained(tmp_path / "hf").eval()
  sd = hf_state_dict(hf_tiny)
  assert {k: v for k, v in hf_state_dict(back).items()}.keys() == sd.keys()
  for k, v in hf_state_dict(back).items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)
  px = pixels(SIZES[1], batch=1)
  assert_close(reference(back, px), ours(model, px), tol=1e-5)
  again = dinov2_io.load_dinov2(tmp_path / "hf", scan=True)
  assert_close(ours(again, px), ours(model, px), tol=1e-6)


def _dvt_reference(patches, sd, heads):
  """DVT's denoiser in torch: patch tokens + antialiased bicubic resampling of its position table,
  then one pre-LN timm block (no layer scale)."""
  b, h, w, d = patches.shape
  t = {k: torch.tensor(v) for k, v in sd.items()}
  g = int(t["pos_embed"].shape[1] ** 0.5)
  pos = F.interpolate(t["pos_embed"].reshape(1, g, g, d).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                      align_corners=False, antialias=True).permute(0, 2, 3, 1).reshape(1, h * w, d)
  x = torch.tensor(patches).reshape(b, h * w, d) + pos
  ln = lambda x, n: F.layer_norm(x, (d,), t[f"denoiser.{n}.weight"], t[f"denoiser.{n}.bias"], eps=1e-6)
  lin = lambda x, n: F.linear(x, t[f"denoiser.{n}.weight"], t[f"denoiser.{n}.bias"])
  q, k, v = lin(ln(x, "norm1"), "attn.qkv").reshape(b, h * w, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
  a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, d)
  x = x + lin(a, "attn.proj")
  x = x + lin(F.gelu(lin(ln(x, "norm2"), "mlp.fc1")), "mlp.fc2")
  return x.reshape(b, h, w, d).numpy()


def test_dvt_denoiser_matches_a_torch_derivation_and_round_trips(hf_tiny, tmp_path):
  cfg = dinov2.get_preset(TINY, dvt_denoiser=True)
  rng = np.random.RandomState(1)
  shapes = {"pos_embed": (1, 256, 64), "denoiser.attn.qkv.weight": (192, 64), "denoiser.attn.qkv.bias": (192,),
            "denoiser.attn.proj.weight": (64, 64), "denoiser.attn.proj.bias": (64,),
            "denoiser.mlp.fc1.weight": (256, 64), "denoiser.mlp.fc1.bias": (256,),
            "denoiser.mlp.fc2.weight": (64, 256), "denoiser.mlp.fc2.bias": (64,),
            **{f"denoiser.norm{i}.{k}": (64,) for i in (1, 2) for k in ("weight", "bias")}}
  dvt = {k: (0.1 * rng.randn(*s) + (k.endswith("norm1.weight") or k.endswith("norm2.weight"))).astype(np.float32)
         for k, s in shapes.items()}
  safetensors.numpy.save_file(dvt, str(tmp_path / "dvt.safetensors"))
  backbone = tmp_path / "backbone"
  dinov2_io.save_hf_dinov2(from_hf(hf_tiny), backbone)
  model = dinov2_io.load_dinov2(backbone, denoiser=tmp_path / "dvt.safetensors")
  assert model.config == cfg
  for size in SIZES[:2]:
    px = pixels(size, batch=1)
    raw = reference(hf_tiny, px)[2]
    np.testing.assert_allclose(ours(model, px)[2], _dvt_reference(raw, dvt, heads=2), atol=1e-4, rtol=0)
  dinov2_io.save_hf_dinov2(model, tmp_path / "with_dvt")
  written = safetensors.numpy.load_file(str(tmp_path / "with_dvt" / dinov2_io.DVT_FILE))
  assert written.keys() == dvt.keys()
  for k in dvt:
    np.testing.assert_array_equal(written[k], dvt[k], err_msg=k)


def test_bad_checkpoints_name_the_problem(hf_tiny, tmp_path):
  model = dinov2.abstract_model(dinov2.get_preset(TINY))
  sd = hf_state_dict(hf_tiny)
  bad = dict(sd, extra=np.zeros(3, np.float32))
  del bad["embeddings.register_tokens"]
  bad["layernorm.weight"] = np.ones(63, np.float32)
  with pytest.raises(CheckpointError) as e:
    dinov2_io.backbone_state(model, bad, source="bad.safetensors")
  msg = str(e.value)
  assert "bad.safetensors (hf layout)" in msg and "missing key 'embeddings.register_tokens'" in msg
  assert "unexpected key 'extra'" in msg and "'layernorm.weight' has shape (63,), expected (64,)" in msg
  timm = timm_layout(sd, 2)
  timm["blocks.1.attn.qkv.weight"] = timm["blocks.1.attn.qkv.weight"][:100]
  timm["blocks.0.attn.proj.weight"] = timm["blocks.0.attn.proj.weight"][:, :8]
  with pytest.raises(CheckpointError, match=r"'blocks\.1\.attn\.qkv\.weight' has shape \(100, 64\): expected q, k"):
    dinov2_io.backbone_state(model, timm, source="t")
  timm["blocks.1.attn.qkv.weight"] = timm_layout(sd, 2)["blocks.1.attn.qkv.weight"]
  with pytest.raises(CheckpointError, match=r"'blocks\.0\.attn\.proj\.weight' \(as 'encoder\.layer\.0\.attention"
                                            r"\.o_proj\.weight'\) has shape \(64, 8\), expected \(64, 64\)"):
    dinov2_io.backbone_state(model, timm, source="t")
  safetensors.numpy.save_file(sd, str(tmp_path / "bare.safetensors"))
  with pytest.raises(CheckpointError, match="does not record the architecture: pass arch="):
    dinov2_io.load_dinov2(tmp_path / "bare.safetensors")
  with pytest.raises(CheckpointError, match="has no DVT denoiser"):
    dinov2_io.denoiser_state(model, {}, source="dvt.pth")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text('{"model_type": "dinov2_with_registers", "use_swiglu_ffn": true}')
  safetensors.numpy.save_file(sd, str(tmp_path / "other" / "model.safetensors"))
  with pytest.raises(CheckpointError, match="use_swiglu_ffn=True: only False is supported"):
    dinov2_io.load_dinov2(tmp_path / "other")


@pytest.mark.parametrize("n_in,n_out", [(37, 16), (37, 3), (16, 37), (5, 9), (7, 6), (2, 37), (16, 16)])
def test_antialiased_bicubic_matrix_is_torchs(n_in, n_out):
  x = np.random.RandomState(n_in * n_out).randn(1, 4, n_in, 3).astype(np.float32)
  ref = F.interpolate(torch.tensor(x), size=(n_out, 3), mode="bicubic", align_corners=False, antialias=True)
  m = pos_embed.antialiased_bicubic_matrix(n_in, n_out)
  np.testing.assert_allclose(np.einsum("oi,bcij->bcoj", m, x), ref.numpy(), atol=2e-5, rtol=0)
