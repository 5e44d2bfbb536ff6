"""OpenAI CLIP directories on the hub carry the legacy special ids (bos 0, eos 2, pad 1): transformers
then pools the text tower at argmax(ids). A random HF CLIP saved with those ids must load and match."""
import json

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from clip_helpers import nhwc, random_hf_clip, random_inputs
from ovs_jax.interchange.clip_weights import load_clip, save_hf_clip
from ovs_jax.models.clip_config import from_hf_dict
from ovs_jax.text_classifier import build_text_classifier
from ovs_jax.tokenizer import tokenize

LEGACY = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
NAMES = ["a photo of a cat.", "a photo of a sofa.", "a photo of the sky.", "lamp"]


def _legacy_hf_dir(tmp_path):
  tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
  cfg = transformers.CLIPConfig(text_config=dict(tower, **LEGACY), projection_dim=32,
                                vision_config=dict(tower, image_size=64, patch_size=16))
  hf = random_hf_clip(cfg)
  hf.save_pretrained(tmp_path / "hf")
  saved = json.loads((tmp_path / "hf" / "config.json").read_text())["text_config"]
  assert {k: saved[k] for k in LEGACY} == LEGACY  # the fixture reproduces the hub files' quirk
  return hf, tmp_path / "hf"


def _reference(hf, pixels, ids):
  px, ids = torch.tensor(pixels), torch.tensor(ids)
  with torch.no_grad():
    return (hf.get_image_features(pixel_values=px).pooler_output.numpy(),
            hf.get_text_features(input_ids=ids).pooler_output.numpy(),
            hf(input_ids=ids, pixel_values=px).logits_per_image.numpy())


def test_legacy_special_ids_match_transformers_on_real_token_ids(tmp_path):
  hf, d = _legacy_hf_dir(tmp_path)
  ours = load_clip(d)
  assert ours.config.text.eos_token_id == 2
  pixels, _ = random_inputs(batch=2)
  ids = tokenize(NAMES)  # SOT ... EOT(49407) then zero padding, as our classifiers feed the tower
  img, txt, logits = _reference(hf, pixels, ids)
  x = jnp.asarray(nhwc(pixels))
  np.testing.assert_allclose(np.asarray(ours.get_image_features(x)), img, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(ours.get_text_features(jnp.asarray(ids))), txt, atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(ours(x, jnp.asarray(ids))), logits, atol=1e-4, rtol=0)
  # The bug this guards against: pooling at the first id == 2 (position 0) gives every text one vector.
  assert np.abs(txt[0] - txt[1]).max() > 1e-3


def test_text_classifier_rows_differ_and_export_keeps_the_pooling(tmp_path):
  hf, d = _legacy_hf_dir(tmp_path)
  ours = load_clip(d)
  clf = build_text_classifier(ours, [["cat"], ["sofa", "couch"], ["sky"]], ["a photo of a {}."])
  cos = clf.embeddings @ clf.embeddings.T
  assert cos[np.triu_indices(len(cos), 1)].max() < 0.999
  save_hf_clip(ours, tmp_path / "export")
  cfg = json.loads((tmp_path / "export" / "config.json").read_text())["text_config"]
  assert {k: cfg[k] for k in LEGACY} == LEGACY
  assert from_hf_dict(json.loads((tmp_path / "export" / "config.json").read_text())).text == ours.config.text
  back = transformers.CLIPModel.from_pretrained(tmp_path / "export").eval()
  ids = tokenize(NAMES)
  np.testing.assert_allclose(_reference(back, *random_inputs(batch=1)[:1], ids)[1],
                             _reference(hf, *random_inputs(batch=1)[:1], ids)[1], atol=1e-6)


def test_text_forward_from_token_embeddings_is_the_ids_forward(tmp_path):
  """The entry point for learned prompts: embeddings of real ids give transformers' features, and
  a context vector spliced in changes the features while the EOT still pools its own position."""
  hf, d = _legacy_hf_dir(tmp_path)
  ours = load_clip(d)
  ids = jnp.asarray(tokenize(NAMES))
  eot = jnp.argmax(ids, -1)
  emb = ours.text_model.embeddings.token_embedding(ids)
  got = np.asarray(ours.text_features_from_embeddings(emb, eot))
  np.testing.assert_allclose(got, _reference(hf, *random_inputs(batch=1)[:1], np.asarray(ids))[1],
                             atol=1e-4, rtol=0)
  spliced = emb.at[:, 1].set(0.5)  # a learned context vector in place of the first word
  moved = np.asarray(ours.text_features_from_embeddings(spliced, eot))
  assert np.abs(moved - got).max() > 1e-3
