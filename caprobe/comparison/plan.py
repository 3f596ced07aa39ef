"""The plan of a comparison: its options, its variants x seeds, and ``plan.json``.

``plan.json`` is written before anything runs. ``--resume`` reads it back: options the new
command gives must equal the saved ones (else a :class:`CaprobeError`, exit 2); options it
leaves out are taken from the plan.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caprobe.comparison.layout import Layout
from caprobe.errors import CaprobeError, require_positive
from caprobe.io import read_json, to_jsonable, write_json

if TYPE_CHECKING:
    from caprobe.comparison.slurm import SlurmOptions
    from caprobe.training.config import TrainConfig

BASELINE = "none"
#: 2: the training fields moved into ``options.training`` (the template of each piece)
PLAN_SCHEMA = 2


def _default_training() -> TrainConfig:
    from caprobe.training.config import TrainConfig

    return TrainConfig()


@dataclass
class CompareOptions:
    """Everything that decides what a comparison computes.

    ``training`` is the template of every training: piece (variant, seed) trains
    ``dataclasses.replace(training, attn=variant, seed=seed)``. Its ``seed`` is the plan's
    first seed; its ``None`` fields are the data set's recipe defaults; its model, data, width
    and profile are also what is counted and timed.
    """

    attn: list[str] = field(default_factory=list)  # the baseline "none" is always added
    #: paired top-1 deltas are also given against this variant (added when missing); the
    #: baseline's deltas are always there
    reference: str = BASELINE
    training: TrainConfig = field(default_factory=_default_training)
    seeds: int = 3  # paired seeds: 3 give a paired interval (1 gives none)
    train: bool = True
    jobs: int | None = None  # trainings at once, one process each; None: default_jobs()
    latency_batch: int = 1
    latency_min_time: float = 0.5
    latency_device: str | None = None  # None: the training device (training.device)
    paper_form: bool = False  # time the models as built instead of caprobe.deploy(model)
    input_size: int | None = None  # counts and latency; None: the data's image size
    map_images: int = 4  # fixed test images drawn in the attention-map section
    #: exported runtimes the trained models are also timed in (caprobe.runtimes), and, with
    #: ``int8``, quantised in and evaluated (:mod:`caprobe.comparison.shipped`)
    runtimes: list[str] = field(default_factory=list)
    int8: bool = False
    #: where the trainings run: "local" (this machine: worker processes, ``jobs``) or
    #: "slurm" (one submitit job array; :mod:`caprobe.comparison.slurm`)
    executor: str = "local"
    slurm: SlurmOptions = field(default_factory=lambda: _slurm_options())

    @property
    def latency_form(self) -> str:
        return "paper" if self.paper_form else "deployed"

    @property
    def seed_list(self) -> list[int]:
        return [self.training.seed + i for i in range(self.seeds)]

    def piece(self, variant: str, seed: int) -> TrainConfig:
        """The training of one piece."""
        return dataclasses.replace(self.training, attn=variant, seed=seed,
                                   data_options=dict(self.training.data_options or {}))

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CompareOptions:
        from caprobe.training.config import TrainConfig

        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        kwargs["training"] = TrainConfig.from_dict(raw.get("training") or {})
        kwargs["slurm"] = _slurm_options(raw.get("slurm"))
        return cls(**kwargs)


def _slurm_options(raw: dict[str, Any] | None = None) -> SlurmOptions:
    from caprobe.comparison.slurm import SlurmOptions

    return SlurmOptions(**(raw or {}))


EXECUTORS = ("local", "slurm")


def option_path(name: str) -> str:
    """Where an option lives: ``"jobs"`` (a field of CompareOptions) or ``"training.epochs"``
    (a field of its training template). The CLI's parameters are named after the fields;
    its ``slurm_X`` parameters are ``"slurm.X"`` (:class:`SlurmOptions`)."""
    if name.startswith("slurm_"):
        return f"slurm.{name.removeprefix('slurm_')}"
    if name in {f.name for f in dataclasses.fields(CompareOptions)}:
        return name
    from caprobe.training.config import TrainConfig

    if name in {f.name for f in dataclasses.fields(TrainConfig)}:
        return f"training.{name}"
    raise KeyError(f"{name!r} is neither a compare option nor a training option")


def option_paths() -> list[str]:
    """Every option's path (see :func:`option_path`)."""
    from caprobe.training.config import TrainConfig

    return [*(f.name for f in dataclasses.fields(CompareOptions) if f.name != "training"),
            *(f"training.{f.name}" for f in dataclasses.fields(TrainConfig))]


def option_value(options: CompareOptions, path: str) -> Any:
    head, _, rest = path.partition(".")
    value = getattr(options, head)
    return getattr(value, rest) if rest else value


def plan_training(plan: dict[str, Any]) -> dict[str, Any]:
    """The training template of a saved plan (plans of schema 1 kept its fields flat)."""
    options = plan.get("options") or {}
    return options.get("training") or options


#: options that only say how to run, never compared on --resume: the new command's value
#: (when given) is used for the new session
NOT_COMPARED: frozenset[str] = frozenset({"jobs", "executor", "slurm"})


def canonical_variants(attn: list[str] | tuple[str, ...]) -> list[str]:
    """``["none", *canonical specs]`` without duplicates, in the order given.

    Raises :class:`CaprobeError` for an empty list or an empty / unknown spec.
    """
    from caprobe.attention import canonical

    attn = list(attn or [])
    if not attn or all(isinstance(a, str) and not a.strip() for a in attn):
        raise CaprobeError("no attention variants given; pass e.g. --attn se cbam ca")
    out = [BASELINE]
    for spec in attn:
        if not isinstance(spec, str) or not spec.strip():
            raise CaprobeError("an empty attention spec was given; pass names such as se, cbam, "
                               "ca or ca:act=relu")
        name = canonical(spec)
        if name not in out:
            out.append(name)
    return out


def validate(options: CompareOptions) -> CompareOptions:
    """Check user-fixable mistakes early and canonicalize the variant list (in place)."""
    from caprobe.training.config import validate as validate_training

    for name in ("seeds", "jobs", "input_size"):
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise CaprobeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    require_positive(options.latency_min_time, "--min-time")
    if options.latency_device is not None:  # before anything is written, like --device
        from caprobe.runtime import resolve_device

        resolve_device(options.latency_device)
    if options.map_images < 0:
        raise CaprobeError(f"map_images must be >= 0, got {options.map_images}")
    if not isinstance(options.reference, str) or not options.reference.strip():
        raise CaprobeError("--reference needs a variant name such as se or ca")
    from caprobe.attention import canonical

    options.reference = canonical(options.reference)
    extra = [options.reference] if options.reference != BASELINE else []
    variants = canonical_variants([*options.attn, *extra] if options.attn else options.attn)
    options.attn = variants[1:]
    _check_runtimes(options)
    if options.executor not in EXECUTORS:
        raise CaprobeError(f"unknown --executor {options.executor!r}; choose local or slurm")
    if options.executor == "slurm":
        from caprobe.comparison.slurm import check_available

        check_available()
        require_positive(options.slurm.time_min, "--slurm-time")
    training = options.training
    if training.attn is not None:
        raise CaprobeError("the training template names an attention module; give the "
                           "variants as CompareOptions(attn=[...]) and leave training.attn unset")
    if training.data_dir is not None:
        training.data_dir = str(Path(training.data_dir).expanduser())
    _check_model(training.model)
    validate_training(options.piece(BASELINE, training.seed))  # the trainings' own checks
    return options


def _check_runtimes(options: CompareOptions) -> None:
    """Canonical runtime names, each installed; ``int8`` only with a runtime and trainings."""
    from caprobe.runtimes import RUNTIMES, backend, check_runtime

    names = list(dict.fromkeys(check_runtime(r) for r in options.runtimes))
    if "eager" in names:
        raise CaprobeError("compare times eager PyTorch already; --runtime takes "
                           f"{', '.join(RUNTIMES)}")
    for name in names:
        backend(name)  # a missing extra: one line naming it
    options.runtimes = names
    if options.int8 and not names:
        raise CaprobeError("--int8 quantises the trained models in an exported runtime; add "
                           f"--runtime with one of {', '.join(RUNTIMES)}")
    if options.int8 and not options.train:
        raise CaprobeError("--int8 evaluates the trained models; drop --no-train")


def _check_model(model: str) -> None:
    from caprobe.models import resolve_name

    resolve_name(model, None)


@dataclass
class Plan:
    options: CompareOptions
    variants: list[str]
    seeds: list[int]
    schema: int = PLAN_SCHEMA
    #: torch threads of every training of the plan, fixed by its first session (``--threads``,
    #: else the cores shared out among the jobs), so that a resumed plan with another
    #: ``--jobs`` trains its remaining pieces exactly as the first ones
    train_threads: int | None = None

    @classmethod
    def from_options(cls, options: CompareOptions) -> Plan:
        validate(options)
        return cls(options=options, variants=[BASELINE, *options.attn],
                   seeds=options.seed_list)

    @property
    def pieces(self) -> list[tuple[str, int]]:
        """Training pieces in execution order: seed-major, so a crash after seed 0 still
        leaves a complete paired comparison."""
        return [(v, s) for s in self.seeds for v in self.variants]

    def to_dict(self, layout: Layout) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "kind": "caprobe-compare",
            "options": self.options.to_dict(),
            "variants": self.variants,
            "seeds": self.seeds,
            "train_threads": self.train_threads,
            "folders": {v: str(layout.variant_dir(v).relative_to(layout.root))
                        for v in self.variants},
            "pieces": [{"variant": v, "seed": s,
                        "run_dir": str(layout.run_dir(v, s).relative_to(layout.root))}
                       for v, s in self.pieces],
        }

    def save(self, layout: Layout) -> Path:
        return write_json(layout.plan, self.to_dict(layout))


def load_plan(root: str | Path) -> dict[str, Any]:
    """``plan.json`` of a run folder; a :class:`CaprobeError` when the folder is not a run."""
    root = Path(root)
    path = Layout(root).plan
    if not root.is_dir():
        raise CaprobeError(f"{root} is not a folder; pass the folder written by caprobe compare")
    if not path.is_file():
        raise CaprobeError(f"{root} is not a caprobe compare run (no plan.json in it); pass the "
                           "folder written by caprobe compare")
    try:
        plan = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise CaprobeError(f"{path} cannot be read ({exc}); the run folder is damaged") from exc
    if not isinstance(plan, dict) or plan.get("kind") != "caprobe-compare":
        raise CaprobeError(f"{path} is not a caprobe compare plan; pass the folder written by "
                           "caprobe compare")
    return plan


def merge_for_resume(saved: dict[str, Any], requested: CompareOptions | None = None,
                     given: Collection[str] | None = None) -> CompareOptions:
    """Options for a resumed run: the saved ones, after checking that every option the new
    command set explicitly (``given``: paths such as ``"seeds"`` or ``"training.epochs"``, see
    :func:`option_path`; every option when None) equals the saved value in ``requested``;
    options in :data:`NOT_COMPARED` take the requested value."""
    if saved.get("schema") != PLAN_SCHEMA:
        raise CaprobeError(f"plan.json has schema {saved.get('schema')}, this caprobe writes "
                           f"{PLAN_SCHEMA}; finish that run with the caprobe that began it, or "
                           "start a new run with --out")
    saved_opts = CompareOptions.from_dict(saved["options"])
    if requested is None:
        return saved_opts
    if given is None:
        given = option_paths()
    requested = dataclasses.replace(requested,
                                    training=dataclasses.replace(requested.training))
    if "attn" in given:  # as validate() lists them: the reference is among the variants
        from caprobe.attention import canonical

        reference = canonical(
            requested.reference if "reference" in given else saved_opts.reference)
        extra = [reference] if reference != BASELINE else []
        requested.attn = canonical_variants([*requested.attn, *extra])[1:]
    if "training.data_dir" in given and requested.training.data_dir is not None:
        requested.training.data_dir = str(Path(requested.training.data_dir).expanduser())
    diffs = []
    for path in sorted(given):
        value, before = option_value(requested, path), option_value(saved_opts, path)
        head, _, field_name = path.partition(".")
        if head in NOT_COMPARED:  # how to run: the new command's value, field by field
            setattr(saved_opts, head, dataclasses.replace(getattr(saved_opts, head), **{
                field_name: value}) if field_name else value)
        elif (to_jsonable(value) != to_jsonable(before)
              and not _same_number(value, before)):
            diffs.append(f"{path.removeprefix('training.')}={_show(value)} "
                         f"(plan.json has {_show(before)})")
    if diffs:
        raise CaprobeError("--resume refuses: options differ from plan.json: " + "; ".join(diffs)
                           + "; drop them or start a new run with --out")
    return saved_opts


def _same_number(a: Any, b: Any) -> bool:
    return (isinstance(a, (int, float)) and isinstance(b, (int, float))
            and not isinstance(a, bool) and float(a) == float(b))


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return json.dumps(to_jsonable(value))
