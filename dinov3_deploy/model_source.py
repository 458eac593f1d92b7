"""Where an artifact's PyTorch model comes from (backbone weights, head checkpoint or random init
with a seed), so export builds it and `verify` rebuilds the identical fp32 reference later."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dinov3_deploy.errors import ArtifactError, CheckpointError, DeployError
from dinov3_deploy.hashing import sha256_file, sha256_path
from dinov3_deploy.manifest import MULTI_TASK

DEFAULT_N_CLASSES = 6  # the synthetic dataset's default (reference/protocol/synthetic.py)
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
    head_type: str | None = None  # "m2f": a Mask2Former head (Meta's file or our M2F directory), else a trainer head

    @property
    def random_backbone(self) -> bool:
        return self.weights is None

    @property
    def random_head(self) -> bool:
        return self.head is None and self.task != "features"

    def build(self, attn_impl: str = "math", *, backbone=None):
        """The fp32 TaskModel in eval mode, through the reference factory's one random-weights
        policy (reference/factory.py): random parts come from `seed` (a head checkpoint's backbone:
        from the seed it recorded), without touching the caller's RNG, so the same source always
        gives the same weights. `backbone`: a module already built from this source's backbone
        (MultiSource builds it once for every head)."""
        from dinov3_deploy.reference.configs import get_config, normalization_for_weights
        from dinov3_deploy.reference.factory import build_task_model
        from dinov3_deploy.reference.models.task_model import TASKS

        if self.task not in TASKS:
            raise DeployError(f"unknown task '{self.task}', expected one of {', '.join(TASKS)}")
        get_config(self.backbone)  # unknown names raise a DeployError listing the known ones
        if self.head_type == "m2f":
            from dinov3_deploy.export.m2f_model import build_m2f_model

            return build_m2f_model(self.backbone, self.head, self.weights, self.seed, attn_impl)
        if self.head is not None:
            from dinov3_deploy.reference.head_checkpoint import load_task_model

            model = load_task_model(self.head, self.weights, attn_impl=attn_impl, backbone=backbone)
            if model.spec.task != self.task:
                raise CheckpointError(
                    f"head checkpoint {self.head} is a '{model.spec.task}' head, not '{self.task}' "
                    f"(pass --task {model.spec.task})"
                )
            return model.eval()
        n_classes = self.n_classes
        if self.task in ("seg", "cls") and n_classes <= 0:
            n_classes = DEFAULT_N_CLASSES
        from dinov3_deploy.reference.protocol.synthetic import MAX_CLASSES, class_names, palette

        mean, std = normalization_for_weights(self.weights)
        extra = {"mean": mean, "std": std}
        if self.task == "seg" and 2 <= n_classes <= MAX_CLASSES:
            extra.update(class_names=class_names(n_classes), palette=palette(n_classes))
        if backbone is None:
            backbone = self.build_backbone(attn_impl)
        try:
            return build_task_model(self.task, backbone, n_classes=n_classes, layers=self.layers,
                                    backbone_weights=self.weights, attn_impl=attn_impl, seed=self.seed, **extra)
        except ValueError as exc:
            raise DeployError(str(exc)) from exc

    def backbone_identity(self) -> tuple:
        """What the backbone this source builds is: ("weights", sha256) or ("random", seed, init)
        (a head checkpoint's: the seed it recorded). Equal identities build equal backbones."""
        if self.weights is not None:
            return ("weights", sha256_path(self.weights))
        if self.head_type == "m2f":
            from dinov3_deploy.reference.formats.m2f_checkpoint import read_m2f_head

            config = read_m2f_head(self.head)[0] or {}
            return ("random", int(config.get("backbone_seed") or self.seed), self.init)
        if self.head is not None:
            from dinov3_deploy.reference.head_checkpoint import read_head_config, recorded_init

            config = read_head_config(self.head)
            return ("random", int(config["backbone_seed"]), recorded_init(config))
        return ("random", self.seed, self.init)

    def build_backbone(self, attn_impl: str = "math"):
        """The backbone alone: from the weights, else the random one of backbone_identity()."""
        from dinov3_deploy.reference.factory import create_backbone, random_backbone

        if self.weights is not None:
            return create_backbone(self.backbone, self.weights, attn_impl=attn_impl)
        _, seed, init = self.backbone_identity()
        return random_backbone(self.backbone, seed, attn_impl=attn_impl, init=init)

    @classmethod
    def resolve(cls, task: str, backbone: str | None, weights=None, head=None, n_classes: int = 0,
                layers: str = "last", seed: int = 0, init: str = "release-like",
                random_backbone_ok: bool = False) -> ModelSource:
        """Fill the backbone name from the head checkpoint when not given; absolute paths.
        `random_backbone_ok`: the user asked for a random backbone (Meta's M2F head file records none)."""
        if head is not None and is_m2f_head(head):
            return cls._resolve_m2f(task, backbone, weights, head, seed, init, random_backbone_ok)
        if head is not None:
            from dinov3_deploy.reference.head_checkpoint import read_head_spec

            spec = read_head_spec(head)
            if backbone is not None and backbone != spec.backbone:
                raise CheckpointError(
                    f"head checkpoint {head} was trained on '{spec.backbone}', not '{backbone}' (drop --model)"
                )
            backbone = spec.backbone
            head = str(Path(head).resolve())
            from dinov3_deploy.reference.head_checkpoint import backbone_for_head, read_head_config, recorded_init

            weights, seed_of_head = backbone_for_head(head, weights)  # the head's own backbone, or a clear refusal
            if seed_of_head is not None:  # the manifest records the init the head's random backbone was drawn with
                recorded = recorded_init(read_head_config(head))
                if init not in ("release-like", recorded):
                    raise DeployError(f"--random-init {init}: {head} was trained on a {recorded} random backbone; "
                                      "drop --random-init")
                init = recorded
        if backbone is None:
            raise DeployError("--model is required unless --head names a head checkpoint")
        if weights is not None:
            if not Path(weights).exists():
                raise CheckpointError(f"backbone weights not found: {weights}")
            weights = str(Path(weights).resolve())
        if init not in RANDOM_INITS:
            raise DeployError(f"--random-init must be one of {', '.join(RANDOM_INITS)}, got '{init}'")
        if init != "release-like" and weights is not None:
            raise DeployError(f"--random-init {init} applies to a random backbone only, and {weights} are weights "
                              "(--weights, or the ones the --head was trained on); drop --random-init")
        return cls(task, backbone, weights, head, n_classes, layers, seed, init)

    @classmethod
    def _resolve_m2f(cls, task: str, backbone: str | None, weights, head, seed: int, init: str,
                     random_backbone_ok: bool) -> ModelSource:
        """A Mask2Former head: our directory records its backbone (seed or weights); Meta's file records
        none, so it needs --weights unless a random backbone was asked for."""
        from dinov3_deploy.reference.formats.m2f_checkpoint import head_backbone

        if task != "seg":
            raise DeployError(f"{head} is a Mask2Former segmentation head: it exports with --task seg, not {task}")
        backbone, config = head_backbone(head, backbone)
        if weights is None and config is None and not random_backbone_ok:
            raise DeployError(f"{head} is Meta's M2F head file, which records no backbone: pass --weights BACKBONE "
                              "(or --random-init release-like for a random backbone, a pipeline demo only)")
        if weights is None and config is not None and (config.get("backbone_weights") or {}).get("path"):
            weights = config["backbone_weights"]["path"]
        if weights is not None:
            if not Path(weights).exists():
                raise CheckpointError(f"backbone weights not found: {weights}")
            weights = str(Path(weights).resolve())
        if config is not None and config.get("backbone_seed") is not None:
            seed = int(config["backbone_seed"])
        return cls("seg", backbone, weights, str(Path(head).resolve()), 0, "four_even", seed, init, head_type="m2f")

    # -- manifest ------------------------------------------------------------------------------
    def to_manifest(self) -> dict:
        head_files = None
        if self.head is not None:
            p = Path(self.head)
            files = sorted(p.iterdir()) if p.is_dir() else [p]
            head_files = {f.name: sha256_file(f) for f in files if f.is_file()}
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
            **({"head_type": self.head_type} if self.head_type else {}),
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
            if not Path(head).exists():
                raise ArtifactError(f"the head checkpoint {head} is gone; pass --head DIR to verify against it")
            for name, digest in (d.get("head_sha256") or {}).items():
                f = Path(head) / name if Path(head).is_dir() else Path(head)
                if not f.exists() or sha256_file(f) != digest:
                    raise ArtifactError(f"head checkpoint file {f} differs from the one the artifact was exported from")
        return cls(d["task"], d["backbone"], weights, head, int(d.get("n_classes", 0)), d.get("layers", "last"),
                   int(d.get("seed", 0)), d.get("init", "release-like"), head_type=d.get("head_type"))


@dataclass(frozen=True)
class MultiSource:
    """What an export builds: one or more heads on one backbone (`export --head A --head B`, or
    `--task seg,depth,cls` for random heads), one ModelSource per head, the backbone built once.
    A single head (or none: features) is the one-part case; only `multi` (two parts or more)
    changes anything, and only how the outputs and the manifest's source are laid out."""

    parts: tuple[ModelSource, ...]

    @property
    def multi(self) -> bool:
        return len(self.parts) > 1

    @property
    def task(self) -> str:
        """The manifest's task: the one part's, or MULTI_TASK."""
        return MULTI_TASK if self.multi else self.parts[0].task

    @property
    def tasks(self) -> list[str]:
        return [p.task for p in self.parts]

    # the shared backbone's facts (resolve checked that every part has the same backbone)
    backbone = property(lambda self: self.parts[0].backbone)
    weights = property(lambda self: self.parts[0].weights)
    seed = property(lambda self: self.parts[0].seed)
    init = property(lambda self: self.parts[0].init)
    random_backbone = property(lambda self: self.parts[0].random_backbone)

    @property
    def random_head(self) -> bool:
        return any(p.random_head for p in self.parts)

    @classmethod
    def resolve(cls, tasks: list[str], backbone: str | None, weights=None, heads=(), n_classes: int = 0,
                layers: str = "last", seed: int = 0, init: str = "release-like",
                random_backbone_ok: bool = False) -> MultiSource:
        """From head checkpoints (their tasks) or, without heads, random heads for `tasks`. Refuses,
        before any model is built, heads of the same task twice and heads trained on different
        backbones (a head only means something on the features it was trained on)."""
        if heads:
            parts = []
            for h in heads:
                parts.append(ModelSource.resolve(head_task(h), backbone, weights, h, n_classes, layers, seed, init,
                                                 random_backbone_ok))
        else:
            parts = [ModelSource.resolve(t, backbone, weights, None, n_classes, layers, seed, init) for t in tasks]
        seen: dict[str, str] = {}
        for p in parts:
            if p.task in seen:
                raise DeployError(f"two heads for task '{p.task}' ({seen[p.task]} and {p.head or 'random'}): "
                                  "a multi-head artifact has one head per task")
            seen[p.task] = p.head or "random"
        if len(parts) > 1:
            _check_one_backbone(parts)
        return cls(tuple(parts))

    def build(self, attn_impl: str = "math"):
        """The fp32 reference: the one part's TaskModel, or a MultiTaskModel (the shared backbone
        built once, each head on it)."""
        if not self.multi:
            return self.parts[0].build(attn_impl)
        from dinov3_deploy.reference.models.multi_task import MultiTaskModel

        backbone = self.parts[0].build_backbone(attn_impl)
        models = [p.build(attn_impl, backbone=backbone) for p in self.parts]
        try:
            return MultiTaskModel.from_task_models(models).eval()
        except ValueError as exc:
            raise DeployError(str(exc)) from exc

    def to_manifest(self) -> dict:
        """The manifest's `source`: the one part's record, or the shared backbone's and one per head."""
        if not self.multi:
            return self.parts[0].to_manifest()
        first = self.parts[0].to_manifest()
        return {"task": MULTI_TASK, "backbone": first["backbone"], "weights": first["weights"],
                "weights_sha256": first["weights_sha256"], "seed": first["seed"], "init": first["init"],
                "random_backbone": first["random_backbone"], "random_head": self.random_head,
                "heads": [p.to_manifest() for p in self.parts]}

    @classmethod
    def from_manifest(cls, d: dict, weights: str | None = None) -> MultiSource:
        return cls(tuple(ModelSource.from_manifest(p, weights=weights) for p in d["heads"]))


def is_m2f_head(path) -> bool:
    """Meta's Mask2Former head file or our M2F head directory (not a trainer head)."""
    from dinov3_deploy.reference.formats.m2f_checkpoint import is_m2f_head as _is_m2f

    return _is_m2f(path)


def head_task(path) -> str:
    """The task a head checkpoint computes: seg for a Mask2Former head, else what its spec says."""
    if is_m2f_head(path):
        return "seg"
    from dinov3_deploy.reference.head_checkpoint import read_head_spec

    return read_head_spec(path).task


def _check_one_backbone(parts: list[ModelSource]) -> None:
    """Heads of one artifact share one backbone: the same name and the same weights (or random seed).
    Hashes the weights: checked only when there are two heads or more."""
    names = {p.backbone for p in parts}
    if len(names) > 1:
        raise CheckpointError("the heads were trained on different backbones: " + ", ".join(
            f"{p.head} on {p.backbone}" for p in parts) + "; a multi-head artifact shares one backbone")
    idents = [p.backbone_identity() for p in parts]
    if len(set(idents)) > 1:
        def what(ident: tuple) -> str:
            kind = "weights sha256" if ident[0] == "weights" else "random backbone seed"
            return f"{kind} {str(ident[1])[:12]}"

        raise CheckpointError("the heads were trained on different backbones: " + "; ".join(
            f"{p.head or p.task + ' (random head)'} on {what(i)}" for p, i in zip(parts, idents))
            + ". Retrain them on one backbone (same --weights, or the same --seed)")


def source_from_manifest(d: dict, weights: str | None = None, head: str | None = None) -> ModelSource | MultiSource:
    """The source an artifact's manifest records (single- or multi-head)."""
    if d.get("task") == MULTI_TASK:
        if head is not None:
            raise DeployError("--head replaces the head of a single-head artifact; this one has several "
                              f"({', '.join(h['task'] for h in d['heads'])}): move the checkpoints back instead")
        return MultiSource.from_manifest(d, weights=weights)
    return ModelSource.from_manifest(d, weights=weights, head=head)
