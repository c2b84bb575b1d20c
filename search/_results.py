"""What a search found, as typed records: :class:`SearchResults` is ``reports/search_test.json``.

Like Optuna's ``FrozenTrial``, each record is a plain dataclass that code reads by attribute;
``to_dict()`` writes the JSON contract (schema :data:`RESULTS_SCHEMA`, unchanged since the file
was a dict) and ``from_dict()`` reads it back, tolerating files written by older versions (a key
they lack takes its default; a key this version does not know is kept in ``extra`` and written
back). ``SearchResults.from_dict(d).to_dict() == d`` for every file the pipeline writes.

The figures of one split (``search``/``test``) are the :class:`fqopt.metrics.FairnessReport`
JSON of ``fqopt.search._trial.compact_report``; :class:`SplitFigures` is a read-only view on that
dict (its layout belongs to ``fqopt.metrics``) with the figures the search reads as attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fqopt._io import read_json
from fqopt.errors import UserError
from fqopt.search._seeds import ATTR_KIND, ATTR_LABEL, ATTR_SEED
from fqopt.search._trial import ATTR_PLAN, ATTR_REPORT

RESULTS_SCHEMA = "fqopt.search-results/1"
RESULTS_FILE = "search_test.json"


# --------------------------------------------------------------------------- the codec
def _nested(cls):
    """Field metadata: the value is a ``cls`` record (or None) stored as its dict."""
    return {"load": cls.from_dict, "dump": lambda v: v.to_dict()}


def _list_of(cls):
    return {"load": lambda xs: [cls.from_dict(x) for x in xs],
            "dump": lambda xs: [x.to_dict() for x in xs]}


def _dict_of(cls):
    return {"load": lambda d: {k: cls.from_dict(v) for k, v in d.items()},
            "dump": lambda d: {k: v.to_dict() for k, v in d.items()}}


def _opt(meta: dict | None = None, **more) -> dict:
    """Metadata of a key the writer leaves out when its value is None."""
    return {**(meta or {}), **more, "optional": True}


class _Record:
    """``to_dict``/``from_dict`` from the dataclass fields: ``metadata["key"]`` renames a field's
    JSON key, ``load``/``dump`` convert a nested value, ``optional`` leaves a None value out.
    A field named ``extra`` keeps the keys this version does not know; a key that an older file
    lacks stays out when written back (while its value is still None)."""

    @classmethod
    def from_dict(cls, d: dict):
        kw: dict[str, Any] = {}
        known = set()
        for f in fields(cls):
            if f.name == "extra":
                continue
            key = f.metadata.get("key", f.name)
            known.add(key)
            if key in d:
                value = d[key]
                load = f.metadata.get("load")
                kw[f.name] = load(value) if load is not None and value is not None else value
        if "extra" in {f.name for f in fields(cls)}:
            kw["extra"] = {k: v for k, v in d.items() if k not in known}
        record = cls(**kw)
        record.__dict__["_absent"] = frozenset(known - set(d))
        return record

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        absent = self.__dict__.get("_absent", frozenset())
        for f in fields(self):
            if f.name == "extra":
                continue
            key = f.metadata.get("key", f.name)
            value = getattr(self, f.name)
            if value is None and (f.metadata.get("optional") or key in absent):
                continue
            dump = f.metadata.get("dump")
            out[key] = dump(value) if dump is not None and value is not None else value
        out.update(getattr(self, "extra", None) or {})
        return out


# --------------------------------------------------------------------------- figures
class SplitFigures:
    """The figures of one plan on one split: a read-only view on its FairnessReport dict."""

    __slots__ = ("data",)

    def __init__(self, data: dict):
        self.data = data

    @classmethod
    def from_dict(cls, d: dict) -> "SplitFigures":
        return cls(d)

    def to_dict(self) -> dict:
        return self.data

    def get(self, key: str, default=None):
        """Any other figure of the report (``accuracy``, ``n``, ``confusion`` ...)."""
        return self.data.get(key, default)

    def __eq__(self, other) -> bool:
        return isinstance(other, SplitFigures) and other.data == self.data

    def __bool__(self) -> bool:
        return bool(self.data)

    def __repr__(self) -> str:
        return (f"SplitFigures(avg_acc={self.avg_acc}, worst_acc={self.worst_acc}, "
                f"worst_group={self.worst_group!r})")

    @property
    def avg_acc(self) -> float:
        return self.data["avg_acc"]

    @property
    def worst_acc(self) -> float:
        return self.data["worst_acc"]

    @property
    def worst_group(self) -> str | None:
        return self.data.get("worst_group")

    @property
    def ci(self) -> dict:
        """``figure -> [lo, hi]`` (95 % bootstrap), empty without intervals."""
        return self.data.get("ci") or {}

    def interval(self, figure: str) -> list[float] | None:
        return self.ci.get(figure)

    @property
    def group_accuracy(self) -> dict[str, float]:
        return self.data.get("group_accuracy") or {}

    @property
    def group_names(self) -> list[str]:
        return list(self.data.get("group_names") or [])

    @property
    def n(self) -> dict[str, int]:
        return self.data.get("n") or {}


_FIGURES = {"load": SplitFigures.from_dict, "dump": SplitFigures.to_dict}


# --------------------------------------------------------------------------- records
@dataclass
class PlanRecord(_Record):
    """One evaluated plan: a Pareto plan (``index`` its place on the front, ``plan_file`` under
    the run folder) or a baseline (``seed`` names it, ``kind`` is its family; ``trial`` is None
    for one evaluated beside the study). ``search`` and ``test``: its figures on each split;
    ``pred``: the key of its per-image test predictions (``reports/test_predictions.npz``)."""

    trial: int | None = None
    index: int | None = None
    label: str = ""
    kind: str = "sampled"
    seed: str | None = None
    params: dict = field(default_factory=dict)
    quantizer: str = "maxabs"
    avg_bits: float = 0.0
    avg_bits_channel: float | None = None
    size_bytes: int | None = None
    objective: str | None = None
    search: SplitFigures | None = field(default=None, metadata=_FIGURES)
    test: SplitFigures | None = field(default=None, metadata=_opt(_FIGURES))
    pred: str | None = field(default=None, metadata=_opt())
    plan_file: str | None = field(default=None, metadata=_opt())
    #: a baseline: whether it is also on the front
    pareto: bool | None = field(default=None, metadata=_opt())
    #: a baseline evaluated beside the study (not a trial of it)
    beside_study: bool | None = field(default=None, metadata=_opt())
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_trial(cls, t, index: int | None = None) -> "PlanRecord":
        """The record of a complete trial (search-split figures only)."""
        plan = t.user_attrs.get(ATTR_PLAN, {})
        params = dict(t.params)
        label = t.user_attrs.get(ATTR_LABEL)
        if label is None:
            if "lambda" in params:
                label = (f"{params.get('method')} λ={params['lambda']:.2f} "
                         f"{params.get('quantizer')}")
            else:
                label = f"direct, {params.get('quantizer')}"
        report = t.user_attrs.get(ATTR_REPORT)
        return cls(trial=t.number, index=index, label=label,
                   kind=t.user_attrs.get(ATTR_KIND, "sampled"),
                   seed=t.user_attrs.get(ATTR_SEED), params=params,
                   quantizer=params.get("quantizer", "maxabs"), avg_bits=float(t.values[2]),
                   avg_bits_channel=plan.get("avg_bits_channel"),
                   size_bytes=plan.get("size_bytes"), objective=plan.get("objective"),
                   search=None if report is None else SplitFigures(report))

    def figures(self, split: str) -> SplitFigures | None:
        """``search`` or ``test`` figures (None when that split was not evaluated)."""
        return {"search": self.search, "test": self.test}[split]


@dataclass
class RefinedRecord(_Record):
    """A Pareto plan after fine-tuning or BAQ (``mode``): its plan file, the refined weights
    (``checkpoint``) and its figures; ``from_index`` is the Pareto plan it started from."""

    from_index: int | None = None
    trial: int | None = None
    label: str = ""
    mode: str | None = field(default=None, metadata=_opt())
    plan_file: str | None = None
    avg_bits: float = 0.0
    quantizer: str = "maxabs"
    size_bytes: int | None = None
    search: SplitFigures | None = field(default=None, metadata=_FIGURES)
    test: SplitFigures | None = field(default=None, metadata=_FIGURES)
    pred: str | None = None
    checkpoint: str | None = None
    seconds: float | None = None
    extra: dict = field(default_factory=dict)

    def figures(self, split: str) -> SplitFigures | None:
        return {"search": self.search, "test": self.test}[split]


@dataclass
class BriefFigures(_Record):
    """The headline figures of a split in the summary (``ci`` only when the split has it)."""

    avg_acc: float | None = None
    worst_acc: float | None = None
    worst_group: str | None = None
    ci: dict | None = field(default=None, metadata=_opt())

    @classmethod
    def of(cls, rep: SplitFigures | None) -> "BriefFigures | None":
        if rep is None:
            return None
        ci = ({k: rep.ci.get(k) for k in ("avg_acc", "worst_acc")} if rep.ci else None)
        return cls(avg_acc=rep.get("avg_acc"), worst_acc=rep.get("worst_acc"),
                   worst_group=rep.get("worst_group"), ci=ci)

    def get(self, key: str, default=None):
        """Like :meth:`SplitFigures.get` (the summary's text reads both the same way)."""
        value = self.to_dict().get(key)
        return default if value is None else value


@dataclass
class RecordBrief(_Record):
    """The summary's copy of a plan record: who it is and its headline figures."""

    index: int | None = None
    trial: int | None = None
    label: str | None = None
    kind: str | None = None
    avg_bits: float = 0.0
    size_bytes: int | None = None
    plan_file: str | None = field(default=None, metadata=_opt())
    quantizer: str | None = None
    pred: str | None = None
    search: BriefFigures | None = field(default=None, metadata=_opt(_nested(BriefFigures)))
    test: BriefFigures | None = field(default=None, metadata=_opt(_nested(BriefFigures)))
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, rec: PlanRecord | None) -> "RecordBrief | None":
        if rec is None:
            return None
        return cls(index=rec.index, trial=rec.trial, label=rec.label, kind=rec.kind,
                   avg_bits=rec.avg_bits, size_bytes=rec.size_bytes, plan_file=rec.plan_file,
                   quantizer=rec.quantizer, pred=rec.pred, search=BriefFigures.of(rec.search),
                   test=BriefFigures.of(rec.test))


@dataclass
class Difference(_Record):
    """``a − b`` on one figure: the point difference, its interval and what it means
    (``better``/``worse`` when the interval excludes 0, else ``tie``)."""

    diff: float = 0.0
    ci: list[float] = field(default_factory=lambda: [0.0, 0.0])
    verdict: str = "tie"
    #: set when the difference stands alone (not inside a :class:`Comparison`)
    method: str | None = field(default=None, metadata=_opt())


@dataclass
class Comparison(_Record):
    """Two plans on the test split: ``worst_acc`` and ``avg_acc`` differences and how the
    intervals were made (``resamples``, ``confidence`` and ``seed`` for a paired bootstrap)."""

    method: str = ""
    resamples: int | None = field(default=None, metadata=_opt())
    confidence: float | None = field(default=None, metadata=_opt())
    seed: int | None = field(default=None, metadata=_opt())
    worst_acc: Difference | None = field(default=None, metadata=_nested(Difference))
    avg_acc: Difference | None = field(default=None, metadata=_nested(Difference))

    def figure(self, name: str) -> Difference | None:
        return {"worst_acc": self.worst_acc, "avg_acc": self.avg_acc}.get(name)

    @property
    def paired(self) -> bool:
        return "paired" in self.method and "unpaired" not in self.method


@dataclass
class RefinedVerdict(_Record):
    """A refined plan against the plan it started from, and which of the two to deploy
    (chosen without the test split, see :func:`fqopt.search._verdict.summarize`)."""

    label: str | None = None
    plan_file: str | None = None
    source_file: str | None = field(default=None, metadata={"key": "from"})
    avg_bits: float | None = None
    test: BriefFigures | None = field(default=None, metadata=_nested(BriefFigures))
    source_test: BriefFigures | None = field(default=None, metadata=_nested(BriefFigures))
    comparison: Comparison | None = field(default=None, metadata=_nested(Comparison))
    #: ``{"refined": search worst_acc, "static": the source's}``
    search_worst_acc: dict | None = field(default=None, metadata=_opt())
    use_refined: bool | None = field(default=None, metadata=_opt())
    export_command: str | None = field(default=None, metadata=_opt())
    extra: dict = field(default_factory=dict)


@dataclass
class BudgetMark(_Record):
    """The plan recommended at one budget of the report."""

    budget: float
    index: int | None = None
    trial: int | None = None
    avg_bits: float = 0.0
    plan_file: str | None = None


@dataclass
class Summary(_Record):
    """The decision a search ends with: the recommended plan at ``budget``, the best baseline
    there and their comparison, the refined plans' verdicts and the plan at each budget."""

    budget: float
    recommended: RecordBrief | None = field(default=None, metadata=_nested(RecordBrief))
    best_baseline: RecordBrief | None = field(default=None, metadata=_nested(RecordBrief))
    comparison: Comparison | None = field(default=None, metadata=_nested(Comparison))
    export_command: str | None = None
    refined: list[RefinedVerdict] = field(default_factory=list,
                                          metadata=_list_of(RefinedVerdict))
    by_budget: list[BudgetMark] = field(default_factory=list, metadata=_list_of(BudgetMark))
    extra: dict = field(default_factory=dict)


@dataclass
class AcceptanceCheck(_Record):
    """The README's check: the best Pareto plan at ≤ ``bits`` average bits against uniform
    ``uniform_bits``-bit on test ``worst_acc`` (``best_plan``: index, trial, avg_bits and its
    test figures)."""

    bits: float
    uniform_bits: int
    uniform_test_worst_acc: float | None = None
    uniform_avg_bits: float | None = None
    uniform_all_layers_test_worst_acc: float | None = None
    best_plan: dict | None = None
    plans_at_or_below: int = 0
    passed: bool = False
    passed_all_layers: bool = False


@dataclass
class StudyInfo(_Record):
    """Which study the results come from and how it was run."""

    name: str | None = None
    storage: str | None = None
    dashboard: str | None = None
    artifacts: str | None = None
    n_trials: int | None = None
    #: trial state -> count (``complete``, ``pruned``, ``fail`` ...)
    states: dict = field(default_factory=dict)
    sampler: str | None = None
    seed: int | None = None
    granularity: str | None = None
    direct: bool = False
    methods: list[str] = field(default_factory=list)
    budget_range: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class RunInfo(_Record):
    """The run folder the search ran on (model, dataset, groups, split sizes)."""

    path: str | None = None
    model: str | None = None
    #: ``{"name": ..., "options": {...}}`` as in the run's config
    dataset: Any = None
    image_size: int | None = None
    num_classes: int | None = None
    groups: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class SearchResults(_Record):
    """Everything a search found (``reports/search_test.json``).

    ``fp32``: ``split -> figures`` of the FP model; ``pareto``: the Pareto plans re-evaluated on
    the test split; ``baselines``: the seed baselines and the uniform plans evaluated beside
    the study; ``refined``: the refined plans; ``check`` and ``summary``: what the search
    concludes (None until the test stage has run); ``stages``: seconds per stage.
    """

    schema: str = RESULTS_SCHEMA
    study: StudyInfo = field(default_factory=StudyInfo, metadata=_nested(StudyInfo))
    run: RunInfo = field(default_factory=RunInfo, metadata=_nested(RunInfo))
    fp32: dict[str, SplitFigures] = field(default_factory=dict,
                                          metadata=_dict_of(SplitFigures))
    pareto: list[PlanRecord] = field(default_factory=list, metadata=_list_of(PlanRecord))
    baselines: list[PlanRecord] = field(default_factory=list, metadata=_list_of(PlanRecord))
    refined: list[RefinedRecord] = field(default_factory=list, metadata=_list_of(RefinedRecord))
    notes: list[str] = field(default_factory=list)
    check: AcceptanceCheck | None = field(default=None,
                                          metadata=_opt(_nested(AcceptanceCheck)))
    summary: Summary | None = field(default=None, metadata=_opt(_nested(Summary)))
    stages: dict[str, float] | None = field(default=None, metadata=_opt())
    extra: dict = field(default_factory=dict)

    @property
    def has_test(self) -> bool:
        """Whether the Pareto plans were re-evaluated on the test split."""
        return any(r.test for r in self.pareto)

    def baseline(self, seed: str) -> PlanRecord | None:
        """The baseline whose seed key is ``seed`` (``uniform:4``, ``uniform-all:4`` ...)."""
        return next((b for b in self.baselines if b.seed == seed), None)


def load_results(run) -> SearchResults | None:
    """The run's ``reports/search_test.json``, or None when there is none. Results of another
    model than the run's are a UserError."""
    path = run.reports_dir / RESULTS_FILE
    if not path.is_file():
        return None
    res = SearchResults.from_dict(read_json(path, what="search results"))
    if res.run.model is not None and res.run.model != run.model_name:
        raise UserError(f"search results {path} are for model {res.run.model!r}, but run "
                        f"{run.path} holds {run.model_name!r}; run `fqopt search --run "
                        f"{run.path} --force`")
    return res
