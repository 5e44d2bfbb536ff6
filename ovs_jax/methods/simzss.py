"""SimZSS (Stegmüller et al., "A Simple Framework for Open-Vocabulary Zero-Shot Segmentation",
ICLR 2025): a frozen vision tower (DINOv2 ViT-B/14 with registers) and a CLIP-shaped text tower
trained from captions to meet it, globally (class token ↔ caption) and locally (caption concepts ↔
the patches they name). The official code has no licence: nothing is copied; DESIGN §6 and
docs/simzss.md give the formulas.

* Frozen vision: class token z_cls (B, Dv) and patch tokens z (B, h, w, Dv).
* Text: causal CLIP text tower (512 wide, 12 layers, 8 heads, GELU, random init), final LN, then
  `text_projection` (Dt → Dv, no bias) on EVERY token; the EOT token is the caption embedding.
* L = L_g (symmetric InfoNCE of z_cls and EOT, scale exp(s) ≤ 100, global batch)
    + λ·L_l (concept loss, `losses/concept_alignment.py`), λ = 0.05.
* Inference: cosine of each patch token with the class-name embeddings (the EOT embedding, or the
  name's token span as L_l forms concepts; templates averaged, max over synonyms), upsampled
  bilinearly; a class named "background" scores the threshold instead, so pixels whose best class
  scores below it become background.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ovs_jax.losses.concept_alignment import local_concept_loss
from ovs_jax.losses.contrastive import logit_scale, symmetric_infonce
from ovs_jax.methods.base import Method
from ovs_jax.models.clip import TextTransformer, dense, l2_normalize
from ovs_jax.models.clip_config import TowerConfig
from ovs_jax.ops.resize import resize
from ovs_jax.text_classifier import max_over_synonyms

# Only the text side trains.
FROZEN = (r"vision/",)
BACKGROUND = "background"
TOWERS = ("dinov2", "clip")


@dataclasses.dataclass(frozen=True)
class SimZSSConfig:
  text: TowerConfig     # `text` and `get_text_features` make the model a text classifier's encoder
  vision_width: int


def text_tower_config(m) -> TowerConfig:
  """CLIP's text tower (OpenAI/OpenCLIP: MLP 4×, LN eps 1e-5, 77 positions, EOT = highest id)."""
  return TowerConfig(m.text_width, 4 * m.text_width, m.text_layers, m.text_heads, "gelu")


class SimZSS(nnx.Module):

  def __init__(self, vision, text_model: TextTransformer, text_config: TowerConfig, vision_width: int,
               *, dtype=jnp.float32, logit_scale_init: float = math.log(1 / 0.07), rngs: nnx.Rngs):
    self.vision = vision
    self.text_model = text_model
    self.text_projection = dense(text_config.hidden_size, vision_width, ("embed", "proj"), dtype=dtype,
                                 rngs=rngs, use_bias=False)
    self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32), out_sharding=())
    self.config = SimZSSConfig(text_config, vision_width)

  @property
  def dense_stride(self) -> int:
    return self.vision.dense_stride

  def image_features(self, pixels):
    """(B, H, W, 3) CLIP-normalised -> (class token (B, Dv), patch tokens (B, h, w, Dv)), float32,
    no gradient (the tower is frozen)."""
    out = jax.lax.stop_gradient(self.vision(pixels))
    return out.pooler_output.astype(jnp.float32), out.patch_tokens.astype(jnp.float32)

  def text_tokens(self, ids):
    """(B, L) ids -> (every token projected (B, L, Dv), the EOT token's (B, Dv))."""
    tokens, eot = self.text_model(ids)
    return self.text_projection(tokens), self.text_projection(eot)

  def get_text_features(self, ids):
    """(B, L) ids -> (B, Dv) caption / class-name embeddings (the text classifier's encoder)."""
    return self.text_projection(self.text_model(ids)[1])


def openclip_text_init(text_model: TextTransformer, projection, seed: int) -> None:
  """Re-draw a text tower's weights as OpenCLIP's `TextTransformer.init_parameters` (the release's
  src/open_clip/transformer.py L553-567): token table N(0, 0.02), positions N(0, 0.01), q/k/v
  N(0, w^-½), attention out and MLP out N(0, w^-½·(2·layers)^-½), MLP in N(0, (2w)^-½), the
  projection N(0, w^-½); the MLP biases keep torch's Linear default U(±fan_in^-½), the attention
  biases 0 (nn.MultiheadAttention), the LayerNorms 1 / 0. Scanned or unrolled layers alike."""
  import numpy as np
  rng = np.random.default_rng(seed)
  emb = text_model.embeddings
  width = emb.token_embedding.embedding.shape[-1]
  layers = text_model.encoder.layers
  n = len(layers) if isinstance(layers, nnx.List) else layers.self_attn.q_proj.kernel.shape[0]
  attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * n) ** -0.5, (2 * width) ** -0.5

  def draw(param, std=None, bound=None):
    shape, dtype = param[...].shape, param[...].dtype
    x = rng.normal(0.0, std, shape) if std is not None else rng.uniform(-bound, bound, shape)
    param[...] = jnp.asarray(x, dtype)
  draw(emb.token_embedding.embedding, 0.02)
  draw(emb.position_embedding.embedding, 0.01)
  for layer in (list(layers) if isinstance(layers, nnx.List) else [layers]):
    a, m = layer.self_attn, layer.mlp
    for p, std in ((a.q_proj, attn_std), (a.k_proj, attn_std), (a.v_proj, attn_std), (a.out_proj, proj_std),
                   (m.fc1, fc_std), (m.fc2, proj_std)):
      draw(p.kernel, std)
    for p in (a.q_proj, a.k_proj, a.v_proj, a.out_proj):
      p.bias[...] = jnp.zeros_like(p.bias[...])
    draw(m.fc1.bias, bound=m.fc1.kernel.shape[-2] ** -0.5)
    draw(m.fc2.bias, bound=m.fc2.kernel.shape[-2] ** -0.5)
  draw(projection.kernel, width ** -0.5)


def simzss_loss(model: SimZSS, batch, num_concepts: int, loss_config):
  """batch: image (B, H, W, 3), text_ids (B, L), concept_ids/starts/ends (B, C) -> (L, terms)."""
  cls, patches = model.image_features(batch["image"])
  tokens, eot = model.text_tokens(batch["text_ids"])
  scale = logit_scale(model.logit_scale[...])
  global_loss = symmetric_infonce(l2_normalize(cls), l2_normalize(eot.astype(jnp.float32)), scale)
  b, h, w, d = patches.shape
  local_loss = local_concept_loss(
      tokens, patches.reshape(b, h * w, d), batch["concept_ids"], batch["concept_starts"],
      batch["concept_ends"], num_concepts, attention_temperature=loss_config.attention_temperature,
      temperature=loss_config.concept_temperature, target=loss_config.local_target,
      group_size=loss_config.get("prototype_group", 0))
  total = global_loss + loss_config.local_weight * local_loss
  concepts = (batch["concept_ids"] >= 0).sum() / b
  return total, {"loss_global": global_loss, "loss_local": local_loss, "logit_scale": scale,
                 "concepts_per_caption": concepts.astype(jnp.float32)}


def name_spans(sentences: list[str], names: list[str], length: int = 77):
  """Token ids (N, length) of each sentence and the [start, end) of its name's tokens in them
  (CLIP BPE is word by word: the name is a contiguous run); the whole text when not found."""
  import numpy as np
  from ovs_jax.tokenizer import EOT, clip_tokenizer, tokenize
  eot = clip_tokenizer().token_to_id(EOT)
  ids, runs = tokenize(sentences, length), tokenize(names, length)
  spans = np.zeros((len(sentences), 2), np.int32)
  for i, (row, name) in enumerate(zip(ids, runs)):
    end = int(np.argmax(row == eot))
    run = name[1:int(np.argmax(name == eot))]
    spans[i] = (1, end)
    for s in range(1, end - len(run) + 1):
      if np.array_equal(row[s:s + len(run)], run):
        spans[i] = (s, s + len(run))
        break
  return ids, spans


def concept_classifier(graphdef, states, vocabulary, templates, batch_size: int = 256):
  """(S, Dv) unit class-name embeddings as the local loss forms concepts: the normalised sum of
  the name's normalised projected tokens in each templated sentence, averaged over templates,
  renormalised; and the (C, K) synonym index."""
  import numpy as np
  from ovs_jax.text_classifier import synonym_layout
  flat, index = synonym_layout(vocabulary)
  sentences = [t.format(n) for n in flat for t in templates]
  ids, spans = name_spans(sentences, [n for n in flat for _ in templates])

  @jax.jit
  def encode(states, ids, spans):
    tokens, _ = nnx.merge(graphdef, *states).text_tokens(ids)
    pos = jnp.arange(ids.shape[1])
    mask = (spans[:, :1] <= pos) & (pos < spans[:, 1:])
    return l2_normalize(jnp.einsum("nl,nld->nd", mask, l2_normalize(tokens.astype(jnp.float32))))
  out = []
  for i in range(0, len(ids), batch_size):
    n = len(ids[i:i + batch_size])
    pad = lambda x: np.pad(x[i:i + batch_size], ((0, batch_size - n), (0, 0)))
    out.append(np.asarray(encode(states, pad(ids), pad(spans)))[:n])
  emb = np.concatenate(out).reshape(len(flat), len(templates), -1).mean(1)
  return np.asarray(l2_normalize(jnp.asarray(emb))), index


def background_class(vocabulary) -> int | None:
  """The index of the class whose main name is "background", or None."""
  return next((i for i, names in enumerate(vocabulary) if names[0].strip().lower() == BACKGROUND), None)


def patch_text_scores(model: SimZSS, pixels, text, synonym_index, background=None, threshold=0.0):
  """pixels (B, H, W, 3) -> (B, H, W, C): cosine of each patch with each class (max over synonyms;
  `text` (S, Dv) unit), the background class (if any) at `threshold`, upsampled bilinearly."""
  _, patches = model.image_features(pixels)
  scores = max_over_synonyms(jnp.einsum("bhwd,sd->bhws", l2_normalize(patches), text), synonym_index)
  if background is not None:
    scores = scores.at[..., background].set(threshold)
  return resize(scores, *pixels.shape[1:3])


def architecture_record(model: SimZSS) -> dict:
  """Everything `build_simzss` needs for the shapes: the vision tower's and the text tower's configs."""
  from ovs_jax.models import clip_family
  from ovs_jax.models.clip_dense_tower import ClipDenseTower
  if isinstance(model.vision, ClipDenseTower):
    vision = {"tower": "clip", "clip": clip_family.to_record(model.vision.clip.config)}
  else:
    vision = {"tower": "dinov2", "config": dataclasses.asdict(model.vision.config)}
  return {"vision": vision, "text": dataclasses.asdict(model.config.text)}


def _vision_tower(config, record=None):
  """-> (frozen tower, its width). record: random weights in its shapes."""
  from ovs_jax.methods.common import clip_from_config, compute_dtype
  from ovs_jax.models import dinov2
  v, m = config.vision, config.model
  kw = dict(dtype=compute_dtype(m.dtype), scan=m.get("scan", False), remat=m.get("remat", False))
  tower = record["tower"] if record else v.tower
  if tower not in TOWERS:
    raise ValueError(f"config.vision.tower={tower!r}: expected one of {TOWERS}")
  if tower == "clip":  # the CPU demo: the CLIP of config.clip as (embedding, MaskCLIP dense map)
    from ovs_jax.models.clip_dense_tower import ClipDenseTower
    t = ClipDenseTower(clip_from_config(config, record and {"clip": record["clip"]}))
    return t, t.width
  denoised = v.get("denoiser_type", "none") == "transformer"
  if denoised and v.weights not in ("", "random") and not v.get("denoiser"):
    raise ValueError("config.vision.denoiser_type='transformer' (the release's) needs the DVT weights: "
                     "--config.vision.denoiser=/path/to/vit_base_patch14_reg4_dinov2.lvd142m.pth (the "
                     "file the SimZSS README names, huggingface.co/jjiaweiyang/DVT voc_denoised/), or "
                     "--config.vision.denoiser_type=none for the raw DINOv2 patches")
  if record:
    cfg = dinov2.Dinov2Config(**record["config"])
    t = dinov2.build(cfg, rngs=nnx.Rngs(config.seed), **kw)
  elif v.weights == "random":
    cfg = dataclasses.replace(dinov2.get_preset(v.arch), dvt_denoiser=denoised)
    t = dinov2.build(cfg, rngs=nnx.Rngs(config.seed), **kw)
  elif not v.weights:
    raise ValueError("config.vision.weights is not set: give DINOv2-with-registers weights with "
                     "--config.vision.weights=PATH (an HF Dinov2WithRegisters directory, or a timm "
                     "vit_base_patch14_reg4_dinov2 file with --config.vision.arch; docs/backbones.md)")
  else:
    from ovs_jax.interchange.dinov2 import load_dinov2
    t = load_dinov2(v.weights, arch=v.arch or None, denoiser=(v.get("denoiser") or None) if denoised else None,
                    **kw)
  return t, t.config.hidden_size


def build_simzss(config, architecture=None) -> SimZSS:
  """The model from the config (weights) or an `architecture_record` (shapes, random weights)."""
  from ovs_jax.methods.common import compute_dtype
  m = config.model
  kw = dict(dtype=compute_dtype(m.dtype), scan=m.get("scan", False), remat=m.get("remat", False))
  vision, width = _vision_tower(config, architecture and architecture["vision"])
  rngs = nnx.Rngs(config.seed + 1)
  if architecture is not None:
    text_config = TowerConfig(**architecture["text"])
    text = TextTransformer(text_config, rngs=rngs, **kw)
  elif m.text_init == "random":  # the release's: OpenCLIP's init of a fresh tower (below)
    text_config = text_tower_config(m)
    text = TextTransformer(text_config, rngs=rngs, **kw)
  elif m.text_init == "clip":  # the text tower of config.clip's CLIP: its own shape, not model.text_*
    from ovs_jax.methods.common import clip_from_config
    clip = clip_from_config(config)
    text, text_config = clip.text_model, clip.config.text
  else:
    raise ValueError(f"config.model.text_init={m.text_init!r}: expected 'random' (SimZSS) or 'clip' "
                     "(the text tower of the CLIP that config.clip names)")
  model = SimZSS(vision, text, text_config, width, dtype=kw["dtype"],
                 logit_scale_init=math.log(1 / m.init_temperature), rngs=rngs)
  if architecture is None and m.text_init == "random":
    openclip_text_init(model.text_model, model.text_projection, config.seed + 1)
  return model


class SimZSSMethod(Method):
  name = "simzss"

  def build_model(self, config, architecture=None) -> SimZSS:
    return build_simzss(config, architecture)

  def architecture(self, model: SimZSS) -> dict:
    return architecture_record(model)

  # ---- captions instead of segmentation crops ----
  def train_source(self, config):
    from input_pipeline.captions import caption_source
    from ovs_jax.inference.engine import FirstRecords
    d = config.data
    if d.captions == "webdataset":  # the release's format: img2dataset shards, local or remote
      from input_pipeline.webdataset import WebDatasetSource
      if not d.get("shards"):
        raise ValueError("config.data.shards is not set: give the img2dataset webdataset shards, e.g. "
                         "--config.data.shards='gs://bucket/mscoco/{00000..00295}.tar' (docs/simzss.md)")
      src = WebDatasetSource(d.shards, skip_bad=d.skip_bad, concepts_dir=d.get("concepts_dir") or None)
    else:
      src = caption_source(d.captions, "train", root=d.root or None, skip_bad=d.skip_bad)
    return FirstRecords(src, d.train_max_images) if d.get("train_max_images") else src

  def training_vocabulary(self, config):
    return []  # trained on captions: no class vocabulary

  def train_data(self, config, source, mesh):
    from input_pipeline import loader
    from input_pipeline.captions import caption_transforms
    from input_pipeline.global_batch import DevicePrefetcher
    from input_pipeline.mappers import Mapper
    from ovs_jax import sharding
    d = config.data
    ops = caption_transforms(d.crop_size, tuple(d.scale_range), d.get("concept_bank") or None,
                             interpolation=d.get("interpolation", "bicubic"),
                             extractor=d.get("concept_extractor", "match"))
    it = iter(loader.make_train_loader(source, config.train.batch_size, Mapper(ops), seed=config.seed,
                                       worker_count=d.worker_count))
    return DevicePrefetcher(it, sharding.batch_sharding(mesh))

  def batch_spec(self, config, batch_size, height, width):
    from input_pipeline.concepts import MAX_CONCEPTS
    c = (batch_size, MAX_CONCEPTS)
    return {"image": ((batch_size, height, width, 3), "float32"), "text_ids": ((batch_size, 77), "int32"),
            "concept_ids": (c, "int32"), "concept_starts": (c, "int32"), "concept_ends": (c, "int32")}

  def loss(self, model, batch, rng, context, config):
    from input_pipeline.concepts import load_bank
    del rng, context  # deterministic; no per-vocabulary context
    return simzss_loss(model, batch, len(load_bank(config.data.get("concept_bank") or None)), config.loss)

  def segmentation_model(self, graphdef, states, config, vocabulary, *, templates, cache_dir=None,
                         train_vocabulary=None, name=None):
    from ovs_jax.inference.segmentation_model import SegmentationModel
    from ovs_jax.text_classifier import build_text_classifier
    model = nnx.merge(graphdef, *states)
    kind = config.model.get("class_embedding", "eot")
    if kind == "eot":  # the caption embedding of L_g, as CLIP classifies
      clf = build_text_classifier(model, vocabulary, templates, cache_dir=cache_dir)
      embeddings, synonym_index = clf.embeddings, clf.synonym_index
    elif kind == "concept":  # the name's tokens, as L_l forms textual concepts
      embeddings, synonym_index = concept_classifier(graphdef, states, vocabulary, templates)
    else:
      raise ValueError(f"config.model.class_embedding={kind!r}: expected 'eot' or 'concept'")
    background, threshold = background_class(vocabulary), float(config.model.background_threshold)

    def apply(params, pixels, valid):
      del valid  # every patch is scored on its own
      states, text, index = params
      return patch_text_scores(nnx.merge(graphdef, *states), pixels, text, index, background, threshold)
    name = name or self.name
    if background is not None:  # reported with the results: the row names the threshold
      name = f"{name} (background below {threshold:g})"
    return SegmentationModel(name, apply,
                             (tuple(states), jnp.asarray(embeddings), jnp.asarray(synonym_index)),
                             [v[0] for v in vocabulary], input_multiple=model.dense_stride)


METHOD = SimZSSMethod()
