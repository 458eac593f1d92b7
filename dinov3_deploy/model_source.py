"""Where an artifact's PyTorch model comes from (backbone weights, head checkpoint or random init
with a seed), so export builds it and `verify` rebuilds the identical fp32 reference later."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dinov3_deploy.errors import ArtifactError, CheckpointError, DeployError
from dinov3_deploy.hashing import sha256_file, sha256_path

DEFAULT_N_CLASSES = 6  # the synthetic dataset's default (reference/training/synthetic.py)
RANDOM_INITS = ("release-like", "outliers")  # --random-init choices (reference/models/random_init.py)


@dataclass(frozen=True)
class ModelSource:
    task: str
    backbone: str
    weights: str | None = None  # backbone checkpoint (any format create_backbone reads)
    head: str | None = None  # head checkpoint directory written by the trainer
    n_classes: int = 0  # seg/cls with a random head
    layers: str = "last"
    seed: int = 0  # random init (backbone and/or head) is drawn from this seed
    init: str = "release-like"  # a random backbone's initialisation: "release-like" | "outliers" (stress test)

    @property
    def random_backbone(self) -> bool:
        return self.weights is None

    @property
    def random_head(self) -> bool:
        return self.head is None and self.task != "features"

    def build(self, attn_impl: str = "math"):
        """The fp32 TaskModel in eval mode, through the reference factory's one random-weights
        policy (reference/factory.py): random parts come from `seed` (a head checkpoint's backbone:
        from the seed it recorded), without touching the caller's RNG, so the same source always
        gives the same weights."""
        from dinov3_deploy.reference.configs import get_config, normalization_for_weights
        from dinov3_deploy.reference.factory import build_task_model
        from dinov3_deploy.reference.models.task_model import TASKS

        if self.task not in TASKS:
            raise DeployError(f"unknown task '{self.task}', expected one of {', '.join(TASKS)}")
        get_config(self.backbone)  # unknown names raise a DeployError listing the known ones
        if self.head is not None:
            from dinov3_deploy.reference.head_checkpoint import load_task_model

            model = load_task_model(self.head, self.weights, attn_impl=attn_impl)
            if model.spec.task != self.task:
                raise CheckpointError(
                    f"head checkpoint {self.head} is a '{model.spec.task}' head, not '{self.task}' "
                    f"(pass --task {model.spec.task})"
                )
            return model.eval()
        n_classes = self.n_classes
        if self.task in ("seg", "cls") and n_classes <= 0:
            n_classes = DEFAULT_N_CLASSES
        from dinov3_deploy.reference.training.synthetic import MAX_CLASSES, class_names, palette

        mean, std = normalization_for_weights(self.weights)
        extra = {"mean": mean, "std": std}
        if self.task == "seg" and 2 <= n_classes <= MAX_CLASSES:
            extra.update(class_names=class_names(n_classes), palette=palette(n_classes))
        backbone = self.backbone
        if self.weights is None:
            from dinov3_deploy.reference.factory import random_backbone

            backbone = random_backbone(self.backbone, self.seed, attn_impl=attn_impl, init=self.init)
        try:
            return build_task_model(self.task, backbone, n_classes=n_classes, layers=self.layers,
                                    backbone_weights=self.weights, attn_impl=attn_impl, seed=self.seed, **extra)
        except ValueError as exc:
            raise DeployError(str(exc)) from exc

    @classmethod
    def resolve(cls, task: str, backbone: str | None, weights=None, head=None, n_classes: int = 0,
                layers: str = "last", seed: int = 0, init: str = "release-like") -> ModelSource:
        """Fill the backbone name from the head checkpoint when not given; absolute paths."""
        if head is not None:
            from dinov3_deploy.reference.head_checkpoint import read_head_spec

            spec = read_head_spec(head)
            if backbone is not None and backbone != spec.backbone:
                raise CheckpointError(
                    f"head checkpoint {head} was trained on '{spec.backbone}', not '{backbone}' (drop --model)"
                )
            backbone = spec.backbone
            head = str(Path(head).resolve())
            from dinov3_deploy.reference.head_checkpoint import backbone_for_head

            weights, _ = backbone_for_head(head, weights)  # the head's own backbone, or a clear refusal
        if backbone is None:
            raise DeployError("--model is required unless --head names a head checkpoint")
        if weights is not None:
            if not Path(weights).exists():
                raise CheckpointError(f"backbone weights not found: {weights}")
            weights = str(Path(weights).resolve())
        if init not in RANDOM_INITS:
            raise DeployError(f"--random-init must be one of {', '.join(RANDOM_INITS)}, got '{init}'")
        if init != "release-like" and (weights is not None or head is not None):
            raise DeployError(f"--random-init {init} applies to a random backbone only; drop --weights / --head")
        return cls(task, backbone, weights, head, n_classes, layers, seed, init)

    # -- manifest ------------------------------------------------------------------------------
    def to_manifest(self) -> dict:
        head_files = None
        if self.head is not None:
            p = Path(self.head)
            head_files = {f.name: sha256_file(f) for f in sorted(p.iterdir()) if f.is_file()}
        return {
            "task": self.task,
            "backbone": self.backbone,
            "weights": self.weights,
            "weights_sha256": sha256_path(self.weights) if self.weights else None,
            "head": self.head,
            "head_sha256": head_files,
            "n_classes": self.n_classes,
            "layers": self.layers,
            "seed": self.seed,
            "init": self.init,
            "random_backbone": self.random_backbone,
            "random_head": self.random_head,
        }

    @classmethod
    def from_manifest(cls, d: dict, weights: str | None = None, head: str | None = None) -> ModelSource:
        """Rebuild the source; files it names must still hash the same (overridable paths)."""
        weights = weights if weights is not None else d.get("weights")
        head = head if head is not None else d.get("head")
        if weights is not None:
            if not Path(weights).exists():
                raise ArtifactError(
                    f"the reference backbone weights {weights} are gone; pass --weights PATH to verify against them"
                )
            if d.get("weights_sha256") and sha256_path(weights) != d["weights_sha256"]:
                raise ArtifactError(f"backbone weights {weights} differ from the ones this artifact was exported from")
        if head is not None:
            if not Path(head).is_dir():
                raise ArtifactError(f"the head checkpoint {head} is gone; pass --head DIR to verify against it")
            for name, digest in (d.get("head_sha256") or {}).items():
                f = Path(head) / name
                if not f.exists() or sha256_file(f) != digest:
                    raise ArtifactError(f"head checkpoint file {f} differs from the one the artifact was exported from")
        return cls(d["task"], d["backbone"], weights, head, int(d.get("n_classes", 0)), d.get("layers", "last"),
                   int(d.get("seed", 0)), d.get("init", "release-like"))
