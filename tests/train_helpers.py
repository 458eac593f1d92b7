"""Tiny training runs for the trainer tests: a few steps of a few 64x64 crops, quiet."""

from dinov3_deploy.reference.training.trainer import TrainConfig


def small_config(out, **kw) -> TrainConfig:
    base = dict(out=str(out), iters=6, batch_size=4, crop=64, base_size=64, train_size=12, val_size=2, warmup=2,
                save_every=0, progress=False, n_figure=0, log_every=1)
    base.update(kw)
    return TrainConfig(**base)
