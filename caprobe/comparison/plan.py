"""The plan of a comparison: its options, its variants x seeds, and ``plan.json``.

``plan.json`` is written before anything runs. ``--resume`` reads it back: options the new
command gives must equal the saved ones (else a :class:`CaprobeError`, exit 2); options it
leaves out are taken from the plan.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caprobe.comparison.layout import Layout
from caprobe.errors import CaprobeError, require_positive
from caprobe.io import read_json, to_jsonable, write_json

BASELINE = "none"
PLAN_SCHEMA = 1


@dataclass
class CompareOptions:
    """Everything that decides what a comparison computes.

    ``None`` for a training field means "TrainConfig's default for this data set". Any other
    :class:`caprobe.training.TrainConfig` field can be set through ``train_options``.
    """

    attn: list[str] = field(default_factory=list)  # the baseline "none" is always added
    #: paired top-1 deltas are also given against this variant (added when missing); the
    #: baseline's deltas are always there
    reference: str = BASELINE
    model: str = "mobilenetv2"
    width: float | None = None
    profile: str | None = None
    data: str = "positional"
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    train_subset: int | None = None
    curve_subset: int | None = None  # TrainConfig.curve_subset
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seeds: int = 3  # paired seeds: 3 give a paired interval (1 gives none)
    seed: int = 0  # first seed; the plan uses seed, seed + 1, ...
    train: bool = True
    device: str = "auto"
    threads: int | None = None  # torch threads per job; None: cores // jobs
    jobs: int | None = None  # trainings at once, one process each; None: default_jobs()
    train_options: dict[str, Any] = field(default_factory=dict)
    latency_batch: int = 1
    latency_min_time: float = 0.5
    latency_device: str | None = None  # None: the training device (--device)
    latency_form: str = "deployed"  # "deployed": caprobe.deploy(model); "paper": as built
    input_size: int | None = None  # counts and latency; None: the data's image size
    image_size: int | None = None  # the data set's image size; None: its own default
    map_images: int = 4  # fixed test images drawn in the attention-map section

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CompareOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


#: options that only say how to run, never compared on --resume: the new command's value
#: (when given) is used for the new session
NOT_COMPARED: frozenset[str] = frozenset({"jobs"})


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
    if not isinstance(options.seeds, int) or options.seeds < 1:
        raise CaprobeError(f"--seeds must be at least 1, got {options.seeds}")
    for name in ("epochs", "steps", "batch_size", "train_subset", "curve_subset", "threads",
                 "jobs",
                 "input_size", "image_size"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise CaprobeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if options.width is not None:
        require_positive(options.width, "--width")
    if options.lr is not None:
        require_positive(options.lr, "--lr")
    require_positive(options.latency_min_time, "--min-time")
    from caprobe.measure.latency import FORMS

    if options.latency_form not in FORMS:
        raise CaprobeError(f"latency form {options.latency_form!r} is unknown; choose one of "
                           f"{', '.join(FORMS)}")
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
    if options.data_dir is not None:
        options.data_dir = str(Path(options.data_dir).expanduser())
    _check_model(options.model)
    _check_training(options)
    return options


def _check_model(model: str) -> None:
    from caprobe.models import resolve_name

    resolve_name(model, None)


def _check_training(options: CompareOptions) -> None:
    """The trainings' own checks (TrainConfig's), before anything is written."""
    from caprobe.comparison.run import train_config
    from caprobe.training.config import validate as validate_training

    validate_training(train_config(options, BASELINE, options.seed))


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
                   seeds=[options.seed + i for i in range(options.seeds)])

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


def merge_for_resume(saved: dict[str, Any], given: dict[str, Any]) -> CompareOptions:
    """Options for a resumed run: the saved ones, after checking that every option the new
    command set explicitly (``given``) equals the saved value; options in
    :data:`NOT_COMPARED` take the given value."""
    saved_opts = CompareOptions.from_dict(saved["options"])
    base = saved_opts.to_dict()
    if "attn" in given:
        given = {**given, "attn": canonical_variants(given["attn"])[1:]}
    if "data_dir" in given and given["data_dir"] is not None:
        given = {**given, "data_dir": str(Path(given["data_dir"]).expanduser())}
    diffs = []
    for key, value in given.items():
        if key in NOT_COMPARED:
            setattr(saved_opts, key, value)
            continue
        if key not in base:
            continue
        if to_jsonable(value) != base[key] and not _same_number(value, base[key]):
            diffs.append(f"{key}={_show(value)} (plan.json has {_show(base[key])})")
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
