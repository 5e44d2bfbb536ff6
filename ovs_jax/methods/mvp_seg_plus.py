"""MVP-SEG+ (Guo et al. 2023, §4: "MVP-SEG combined with the knowledge transfer stage"): MaskCLIP+'s
stage (`methods/maskclip_plus.py`, every value from MaskCLIP's code) with a trained MVP-SEG as the
frozen teacher. Its pseudo-labels are the argmax over the unseen classes of MVP-SEG's inference
map m = m_f·g computed over the whole vocabulary (the learned multi-view prompts of every class,
computed once per vocabulary); the student's classifier stays CLIP's text embeddings (the teacher's
CLIP, MaskCLIP's 85 templates), as in MaskCLIP+. The paper does not say more; the rest is MaskCLIP+.

`config.teacher.checkpoint`: the MVP-SEG workdir (its newest checkpoint), e.g. runs/mvp_voc; "demo":
the `configs/mvp_seg_vitb16.py:demo` run, trained once into the cache (OVS_JAX_CACHE) on first use;
"random": an untrained MVP-SEG on `config.clip` (shape and pipeline checks).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ovs_jax.methods.maskclip_plus import MaskCLIPPlusMethod


class MVPSegPlusMethod(MaskCLIPPlusMethod):
  name = "mvp_seg_plus"

  def build_teacher(self, config, record=None):
    from ovs_jax.methods.mvp_seg import MVPSeg
    if record is None:  # the trained MVP-SEG, restored once
      from ovs_jax.restore import restore_workdir
      if not config.teacher.get("checkpoint"):
        raise ValueError("config.teacher.checkpoint is not set: give the trained MVP-SEG workdir "
                         "(python -m ovs_jax.train --config=configs/mvp_seg_vitb16.py... --workdir=DIR)")
      checkpoint = config.teacher.checkpoint
      if checkpoint == "random":  # shapes / pipeline checks: an untrained MVP-SEG on config.clip
        from ovs_jax.methods.common import clip_from_config
        return MVPSeg(clip_from_config(config), _default_mvp_config(), rngs=nnx.Rngs(config.seed))
      if checkpoint == "demo":
        checkpoint = demo_teacher(config.seed)
      tcfg, graphdef, state, _ = restore_workdir(checkpoint)
      if tcfg.method != "mvp_seg":
        raise ValueError(f"config.teacher.checkpoint={config.teacher.checkpoint}: a {tcfg.method!r} "
                         "run, expected an mvp_seg one")
      return nnx.merge(graphdef, state["params"], state["frozen"])
    import ml_collections

    from ovs_jax.methods.common import clip_from_config
    clip = clip_from_config(config, {"clip": record["clip"]})
    return MVPSeg(clip, ml_collections.ConfigDict(record["model"]), rngs=nnx.Rngs(0))

  def teacher_record(self, teacher):
    from ovs_jax.models import clip_family
    model = dict(views=teacher.contexts.shape[0] - 1, context_length=teacher.contexts.shape[1],
                 context_init="random", tau1_init=1.0, tau2_init=1.0, gamma=teacher.gamma,
                 global_prompt_refining=teacher.refine, gpr_bias=teacher.gpr_bias is not None)
    return {"clip": clip_family.to_record(teacher.clip.config), "model": model}

  def teacher_context(self, model, vocabulary):
    """The teacher's prompt text features (k+1, S, P) of every class."""
    from ovs_jax.methods import mvp_seg
    ids, eot, index = mvp_seg.prompt_context(model.teacher, vocabulary)
    graphdef, state = nnx.split(model.teacher)
    return (mvp_seg.text_features(graphdef, (state,), ids, eot), index)

  def teacher_context_spec(self, model, num_classes, synonyms):
    p = model.teacher.clip.text_projection.kernel.shape[-1]
    views = model.teacher.contexts.shape[0]
    return (((views, num_classes * synonyms, p), "float32"), ((num_classes, synonyms), "int32"))

  def teacher_scores(self, model, pixels, context, config, out_hw):
    unseen, (text, index) = context[2], context[3:5]
    valid = jnp.ones((pixels.shape[0], *out_hw), bool)
    log_m, _ = model.teacher(pixels, text, index, out_hw, valid)
    return log_m[..., unseen]  # already at the label size: the upsampling in argmax_over is exact


def _default_mvp_config():
  import ml_collections
  return ml_collections.ConfigDict(dict(views=3, context_length=16, context_init="random",
                                        tau1_init=100.0 / 3, tau2_init=0.07, gamma=100.0,
                                        global_prompt_refining=True, gpr_bias=False))


def demo_teacher(seed: int = 0):
  """The demo MVP-SEG workdir in the cache, trained on first use (`configs/mvp_seg_vitb16.py:demo`)."""
  from pathlib import Path

  from ovs_jax.config_utils import recipe_config
  from ovs_jax.evaluation import DEFAULT_CACHE
  from ovs_jax.trainer import train_and_evaluate
  workdir = Path(DEFAULT_CACHE) / f"mvp_seg_demo_teacher_seed{seed}"
  if not (workdir / "train_result.json").exists():
    recipe = Path(__file__).resolve().parents[2] / "configs" / "mvp_seg_vitb16.py"
    config = recipe_config(recipe, "demo")
    config.seed = seed
    config.evals = {}  # the teacher's own evaluation is the MVP-SEG row of the demo table
    train_and_evaluate(config, workdir)
  return workdir


METHOD = MVPSegPlusMethod()
