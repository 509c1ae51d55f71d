"""Settings: one validated model, read from `flywheel.yaml` (optional) and the environment.

Defaults are the standard recipe, so the demo needs no file at all. An error names the
file, the field and what is wrong with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from flywheel.config_services import (
    ComputeSettings,
    LabelStudioSettings,
    MlflowSettings,
    SensorSettings,
    StoreSettings,
    _Section,
)
from flywheel.layout import check_name

DEFAULT_CLASSES = ["clear_road", "vehicle", "pedestrian", "cyclist", "red_light", "obstacle"]
CONDITIONS = ["day", "night", "rain", "fog"]
IMAGE_SIZE = 64  # model input side, pixels


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names where and why."""


class IngestSettings(_Section):
    max_pixels: int = Field(4096 * 4096, ge=1)  # larger images quarantine their clip
    # Larger MCAP chunks (as declared, checked before decompressing) quarantine their clip: a few KB
    # of zstd can declare GBs.
    max_chunk_bytes: int = Field(256 * 2**20, ge=1)
    # An uploaded clip over this many bytes is quarantined unread (too_large); all of a clip's chunks
    # together decompress to at most max_expansion bytes per uploaded byte beyond 16 MiB.
    max_clip_bytes: int = Field(256 * 2**20, ge=1)
    max_expansion: float = Field(64.0, ge=1)
    resize: int | None = Field(None, ge=8)  # longest side; None keeps images as uploaded
    workers: int | None = Field(None, ge=1)  # processes reading and parsing clips; None: the number of cores


class SimSettings(_Section):
    vehicles: int = Field(8, ge=1)
    frames_per_clip: int = Field(8, ge=1)
    cameras: list[str] = ["front"]
    width: int = Field(96, ge=16)
    height: int = Field(72, ge=16)
    fps: float = Field(5.0, gt=0)
    # Share of each condition at the start of the drift and at its end (after drift_clips).
    conditions_start: dict[str, float] = {"day": 0.80, "night": 0.12, "rain": 0.06, "fog": 0.02}
    conditions_end: dict[str, float] = {"day": 0.40, "night": 0.20, "rain": 0.20, "fog": 0.20}
    drift_clips: int = Field(600, ge=1)
    encodings: list[Literal["json", "protobuf", "cdr"]] = ["protobuf", "json", "cdr"]
    # The simulated labeling team of the demo (flywheel/sim/annotator.py): wrong answers, lag in batches.
    annotator_error_rate: float = Field(0.0, ge=0, le=1)
    annotator_delay_batches: int = Field(0, ge=0)

    @field_validator("conditions_start", "conditions_end")
    @classmethod
    def _known_conditions(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}; known: {CONDITIONS}")
        if any(p < 0 for p in v.values()) or sum(v.values()) <= 0:
            raise ValueError("condition shares must be >= 0 and not all zero")
        return v


class EvalSettings(_Section):
    """The evaluation sets: test frames reserved per slice so the slices that matter have enough to judge,
    and the fixed held-out set that never changes once made."""

    per_slice_frames: int = Field(100, ge=0)  # reserve test clips while a slice has fewer labeled frames
    max_reserved_share: float = Field(0.25, ge=0, le=1)  # of a batch's train clips, at most, moved to test
    # The fixed held-out set (flywheel/evaluation/evalset.py): the labeled test frames of the first dataset version
    # that has at least this many, frozen then; every later model is scored on the same frames.
    fixed_set_min_frames: int = Field(100, ge=1)


class DatasetSettings(_Section):
    name: str = "perception"
    shard_mb: float = Field(64.0, gt=0)
    row_group_rows: int = Field(256, ge=1)
    split: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
    golden_size: int = Field(200, ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "dataset name")  # part of every dataset key

    @field_validator("split")
    @classmethod
    def _split(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError("split needs exactly the keys train, val, test")
        if abs(sum(v.values()) - 1.0) > 1e-6 or any(p < 0 for p in v.values()):
            raise ValueError("split shares must be >= 0 and sum to 1")
        return v


class AugmentSettings(_Section):
    pipeline: str | None = None  # path to an albumentations YAML (to_dict form); None: built-in
    # The task's labels survive a horizontal flip, a small rotation, scaling and shifts (a road scene's
    # classes do; left/right, near/far or a digit's shape do not): the reader then flips, and the
    # built-in offline pipeline adds augment_geometric.yaml (a `pipeline` of your own is used as written).
    # None: true for the built-in class list only (Settings.geometric_aug); say so for your own classes.
    geometric: bool | None = None
    target_share: float = Field(0.5, ge=0, le=1)  # oversample rare groups towards this share of the largest
    max_copies: int = Field(4, ge=0)  # augmented copies per original at most
    seed: int = 0


class EngineSettings(_Section):
    """The data engine: shadow-mode uploads, auto-labels, the human queue (off: labels from the clips)."""

    enabled: bool = False
    # What flags a clip for upload in shadow mode (flywheel/engine/shadow.py): `confidence`, any frame below
    # shadow_threshold (trigger low_confidence); `novelty`, unlike the champion's training data, where about
    # novelty_share of the training set's own clips would be flagged (trigger novel).
    shadow_trigger: Literal["confidence", "novelty"] = "confidence"
    shadow_threshold: float = Field(0.6, ge=0, le=1)  # any frame below this confidence: upload as low_confidence
    novelty_share: float = Field(0.1, gt=0, lt=1)
    shadow_measure: Literal["max_softmax", "margin", "entropy"] = "max_softmax"
    uploads_per_day: int | None = Field(None, ge=0)  # cap on shadow-mode uploads per simulated day
    auto_threshold: float = Field(0.9, ge=0, le=1)  # champion confidence at or above which a frame is auto-labeled
    auto_labels: bool = True  # off: every label comes from people, and every frame may be queued for them
    # None: every class's confident guesses become auto labels. A number: only classes whose confident guesses
    # on the golden set were right at least this often, over >= auto_min_support of them (labeling/trust.py).
    auto_min_precision: float | None = Field(None, ge=0, le=1)
    auto_min_support: int = Field(20, ge=1)
    label_budget: int = Field(64, ge=0)  # frames per fleet batch sent to humans
    # Mining for scarce slices: after each deployment, a campaign (flywheel/engine/campaigns.py) for the rarest
    # condition while it is below this share of the newest dataset version's labeled originals, renewed with each
    # version's frames of it; None: campaigns only when people start one.
    scarce_share: float | None = Field(None, gt=0, lt=1)
    scarce_match_share: float = Field(0.02, gt=0, lt=1)  # the share of ordinary frames a scarce-slice query matches
    # Synthetic frames for scarce conditions (flywheel/data/synth.py): each batch's train frames of the most common
    # condition get fog, night or rain laid over them, for every such condition below this share of the batch's
    # labeled train frames, up to that share; None: off. Classification only (detection ignores it). With 0.3 the
    # default engine reached random's final fog accuracy with 0.60 of its labels on both the road world and digits,
    # 5 seeds each, never significantly below random at any iteration; 0.2 gave 0.60 on road but 0.80 on digits
    # (BENCHMARKS.md, "Synthetic frames of the scarce conditions").
    synthesize_share: float | None = Field(0.3, gt=0, lt=1)
    strategy: Literal["uncertainty", "diversity", "balanced", "hybrid", "typical", "random"] = "hybrid"
    image_url_prefix: str | None = None  # how annotators reach queued images; None: store URIs
    # A label is flagged as a likely error only when the evidence (the champion's probabilities blended with a
    # cross-validated model of the batch's own labels) prefers another class by this margin (p[suggested] -
    # p[given]); 0.8: precision 0.89 (0.70-1.0 per run) against errors injected into four datasets, two seeds
    # each, where 0.7 had 0.77 (0.54-0.91); recall 0.18 against 0.31 (BENCHMARKS.md).
    label_error_min_score: float = Field(0.8, ge=0, le=1)
    seed: int = 0


class TrainSettings(_Section):
    # None: scaled to the data, as many passes as take `steps` optimizer steps but at least `min_passes`
    # (at most 100: TrainConfig.epochs_for); a number: exactly that many passes, whatever the data size.
    epochs: int | None = Field(None, ge=1)
    steps: int = Field(800, ge=1)  # the step budget of a run whose epochs are None (each phase, with refit)
    # The passes a run whose epochs are None takes at least: past steps / min_passes batches per pass (~2,560
    # train rows at 800 steps) the budget grows with the data, as the CNN yardstick's 10 epochs do. 20 (it was 3,
    # which kept 800 steps up to ~17,000 rows: 3 passes there) lifted the three 3,000-frame benchmark rows it
    # lengthens, sim96 by 1.5 points to level with the CNN (BENCHMARKS.md, "A floor of 20 passes").
    min_passes: int = Field(20, ge=1, le=100)
    # After the select run (train, best val epoch): the same recipe again on train + val, whose last weights are
    # the challenger (flywheel/training/fit.py). Off by default: at 200 steps it won on ~900 train rows but lost
    # to the select run on the demo's ~4,000 (BENCHMARKS.md, "Refit on train + val at 200 steps").
    refit: bool = False
    # Start from the champion's weights (same classes and architecture) instead of from scratch. Off: at
    # the step budget, fresh runs scored higher on held-out frames than warm-started ones (BENCHMARKS.md).
    warm_start: bool = False
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    # AdamW's decoupled decay and the spatial head's dropout: 0.05 and 0.5 (they were 5e-4 and 0.3), measured over six
    # dataset families at two pool sizes, 3 seeds (BENCHMARKS.md, "Dropout 0.5 and weight decay 0.05 on every row")
    weight_decay: float = Field(0.05, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    width: int = Field(16, ge=4)  # channels of the first stage: 16 trains at ~700 img/s on 2 CPU cores
    depth: int = Field(2, ge=1)
    # Stages of residual blocks, each after the first halving the map and doubling the channels. A fourth at
    # 96 px (a 6x6 last map like the script CNN's, 1.3x the compute) did not lift sim96 at ~1,800 train frames
    # (BENCHMARKS.md, "Regularization and a fourth stage on sim96").
    stages: int = Field(3, ge=1, le=6)
    # 2 halves the input at once (4x fewer FLOPs); 1 keeps a small input's detail. None: 1 for inputs of
    # 32 px or less (a stride-2 stem leaves their last stage 4x4), else 2 (TrainConfig.architecture).
    stem_stride: Literal[1, 2] | None = None
    # A halving stem that convolves at full resolution and max-pools (flywheel/model.py), not a stride-2 conv.
    stem_pool: bool = False
    # The stem conv's side. 7 (ResNet's stem) lifted sim96 at ~1,800 train frames by 0.9 points but lost 2.9 on
    # headway at ~900 (BENCHMARKS.md, "sim96 at 3,000 frames over five seeds, and three probes").
    stem_kernel: Literal[3, 5, 7] = 3
    # What the network does with its last feature map: `spatial` flattens it (a hidden layer sees where each
    # feature is: the label when it is the distance to the car ahead or a side); `coord` adds each position's
    # (x, y) before averaging (fewer weights); `pool` averages position away (flywheel/model.py).
    head: Literal["both", "spatial", "coord", "pool"] = "both"
    dropout: float = Field(0.5, ge=0, lt=1)  # before the spatial head's hidden layer (see weight_decay)
    # true: return the weights of the epoch with the best val macro-F1 (the latest of equals), not the last
    # epoch's. Off: under the one-cycle schedule the last epoch scored +0.70 ± 0.23 points above the kept one
    # on held-out frames over 120 benchmark rows (69 above, 27 below; BENCHMARKS.md, "The last epoch, not the
    # best val epoch"): a val split of a few hundred frames picks noise.
    keep_best: bool = False
    # A number: the challenger is an exponential moving average of the weights (and BatchNorm statistics),
    # updated after every step with this decay (0.99 averages over ~100 steps); None: the weights as trained.
    # Off: 0.998 moved sim96 by -0.3 and -0.2 points (two seeds): the one-cycle run already ends annealed.
    ema: float | None = Field(None, gt=0, lt=1)
    num_workers: int = Field(0, ge=0)
    compile: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup_pct: float = Field(0.25, gt=0, lt=1)


class GateSettings(_Section):
    """The promotion gate (flywheel/evaluation/gate.py): the challenger must show its gain and that no slice got worse."""

    metric: Literal["accuracy", "macro_f1"] = "macro_f1"
    margin: float = 0.0  # the lower end of the overall gain's paired interval must be above this
    # superior: the gain must clear the margin; no_worse_on_newer_data (opt-in): a challenger trained on a
    # newer dataset version may also pass when it is shown no worse than -slice_tolerance overall
    promote: Literal["superior", "no_worse_on_newer_data"] = "superior"
    slice_tolerance: float = Field(0.05, ge=0)  # a gated slice passes when its interval's lower end is above -this
    floor: float = Field(0.4, ge=0, le=1)  # first model: reach this absolute score
    min_slice_frames: int = Field(100, ge=1)  # smaller slices are inconclusive: shown, not gated ...
    # ... except these (fnmatch patterns; condition=* is every condition the frames name, class=* every
    # class): an inconclusive critical slice fails the gate closed
    critical_slices: list[str] = ["condition=*", "class=*"]
    confidence: float = Field(0.95, gt=0, lt=1)  # of the paired bootstrap intervals
    resamples: int = Field(1000, ge=100)  # bootstrap resamples
    allow_new_classes: bool = False  # a challenger with another class list than the champion's may pass
    require_approval: bool = False  # a passed challenger deploys only once a person approved it (flywheel approve)

    @model_validator(mode="before")
    @classmethod
    def _no_standing_force(cls, data):
        # A force in the settings stayed on for every later challenger and anyone who could set config
        # could set it; a force is now a record for one named version (`flywheel force`).
        if isinstance(data, dict) and ({"force", "force_reason"} & set(data)):
            raise ValueError("gate.force and gate.force_reason are no longer settings: a force names one "
                             "challenger and is recorded with who forced it: flywheel force vN --reason WHY")
        return data


class TuneSettings(_Section):
    """Hyperparameter search over the `train:` fields flywheel.yaml leaves unset (flywheel/training/tune.py);
    trials are scored on the val split by `gate.metric`."""

    trials: int = Field(20, ge=1)  # trials per tune run
    minutes: float = Field(30.0, gt=0)  # no trial starts after this; the one running finishes
    storage: str | None = None  # Optuna's database URL; None: SQLite under $FLYWHEEL_HOME/tune/
    cron: str = "0 3 * * 0"  # the weekly tune run: Sundays 03:00 UTC, after the nightly iteration
    # After each training the yardstick CNN (flywheel/training/baseline.py) trains this many epochs on at most
    # `baseline_frames` of the same train frames (a seeded sample), a quarter of the training's time or less
    # (BENCHMARKS.md); a challenger below it on val asks the retune sensor for a tune run. 0: no check.
    baseline_epochs: int = Field(4, ge=0)
    baseline_frames: int = Field(800, ge=1)

    @field_validator("storage")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError(f"{v!r} is not a database URL (postgresql+psycopg2://user@host/db, ...)")
        return v


class DeploySettings(_Section):
    """What the cars run: the fp32 ONNX graph, or an int8 one built beside it and checked against it."""

    int8: bool = True  # build the int8 model (static QDQ quantization, per channel) at each deploy
    int8_max_drop: float = Field(0.005, ge=0, le=1)  # accuracy it may lose against fp32 on the test frames
    serve: Literal["int8", "fp32"] = "int8"  # int8 only when its check passed; else fp32, and the manifest says why
    calibration_frames: int = Field(256, ge=1)  # train frames that calibrate the int8 ranges


class DetectionSettings(_Section):
    """The detection task (`task: detection`): a CenterNet detector (flywheel/detection/) trained on the
    frames' boxes, judged by COCO mAP. The model's input side is `image_size` (a multiple of 8)."""

    steps: int = Field(600, ge=1)  # optimizer steps per challenger (mAP@.5 0.43 at 400 frames: BENCHMARKS.md)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(16, ge=4)  # the backbone's first stage
    augmentation: bool = True  # flip, scale, shift and photometric transforms, boxes moved with the pixels
    # A detection at or above this score is a box the model reports (auto labels, the pre-filled boxes
    # people correct in Label Studio, the fleet's shadow trigger); COCO mAP scores every detection.
    min_score: float = Field(0.4, gt=0, lt=1)
    # Per-frame uncertainty for the engine: detections between these scores are ones the model is unsure of.
    unsure_band: tuple[float, float] = (0.15, 0.4)
    floor: float = Field(0.2, ge=0, le=1)  # the first model's mAP@.5 must reach this (the gate)

    @field_validator("unsure_band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError(f"the unsure band is [low, high) with 0 <= low < high <= 1, got {list(v)}")
        return v
    # The per-turn yardstick: the same detector trained the plain way (no augmentation, this many steps) on the
    # same train frames, both scored on val; it must beat the untrained model (else "broken": it did not learn).
    # 0: no check.
    yardstick_steps: int = Field(150, ge=0)


class Settings(_Section):
    store: StoreSettings = StoreSettings()
    # classification: one class per frame (`classes`); detection: boxes of `classes` per frame
    # (the clips' /ground_truth/boxes/<camera> channels), a detector judged by mAP
    task: Literal["classification", "detection"] = "classification"
    classes: list[str] = DEFAULT_CLASSES
    image_size: int = Field(IMAGE_SIZE, ge=8, le=1024)
    sensor: SensorSettings = SensorSettings()
    ingest: IngestSettings = IngestSettings()
    sim: SimSettings = SimSettings()
    dataset: DatasetSettings = DatasetSettings()
    eval: EvalSettings = EvalSettings()
    augment: AugmentSettings = AugmentSettings()
    engine: EngineSettings = EngineSettings()
    train: TrainSettings = TrainSettings()
    gate: GateSettings = GateSettings()
    deploy: DeploySettings = DeploySettings()
    mlflow: MlflowSettings = MlflowSettings()
    labelstudio: LabelStudioSettings = LabelStudioSettings()
    compute: ComputeSettings = ComputeSettings()
    tune: TuneSettings = TuneSettings()
    detection: DetectionSettings = DetectionSettings()
    _home: Path = PrivateAttr(default_factory=lambda: flywheel_home())  # resolved once, when loaded

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("at least two classes are needed")
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @model_validator(mode="after")
    def _detector_input(self) -> Settings:
        if self.task == "detection" and (self.image_size % 8 or self.image_size < 16):
            raise ValueError(f"task: detection needs an image_size that is a multiple of 8, at least 16 (the "
                             f"detector's stride), got {self.image_size}")
        return self

    @model_validator(mode="after")
    def _no_secrets(self) -> Settings:
        # Settings travel whole: to MLflow (params, config/settings.json), the training command, a pod
        # spec, the run config. A password in one of them would go wherever they go.
        for field, value in _strings(self.model_dump()):
            try:
                password = urlsplit(value).password if "@" in value else None
            except ValueError:
                password = None
            if password:
                raise ValueError(f"{field} holds a password in its URL: settings are copied to MLflow, the "
                                 f"training command and pod specs, so they hold no secrets. Give the "
                                 f"credential through the environment instead ({SECRET_ENV.get(field, SECRET_ENV['*'])})")
        return self

    @property
    def home(self) -> Path:
        """`$FLYWHEEL_HOME` as it was when these settings were loaded."""
        return self._home

    @property
    def metric(self) -> str:
        """The score a model is judged by: `gate.metric` for classification, mAP@.5 (`map50`) for detection."""
        return "map50" if self.task == "detection" else self.gate.metric

    @property
    def geometric_aug(self) -> bool:
        """Whether augmentation may flip, rotate, scale and shift: `augment.geometric`, or when unset,
        whether the classes are the built-in road-scene classes (a mirrored road scene keeps them)."""
        if self.augment.geometric is not None:
            return self.augment.geometric
        return self.classes == DEFAULT_CLASSES

    @property
    def store_root(self) -> str:
        return self.store.root or str(self.home)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"


SECRET_ENV = {  # where a credential goes instead of a settings URL
    "mlflow.tracking_uri": "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
    "tune.storage": "PGPASSWORD, or ~/.pgpass, for PostgreSQL",
    "store.endpoint_url": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "labelstudio.url": "the token in the variable labelstudio.api_key_env names",
    "*": "a variable the client reads, not the URL",
}


def _strings(value, prefix: str = ""):
    """(dotted field, value) of every string in a settings dump."""
    if isinstance(value, str):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{prefix}[{i}]")


def flywheel_home() -> Path:
    """`$FLYWHEEL_HOME`, default `./.flywheel`, as an absolute path."""
    return Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")).resolve()


def config_path(path: str | os.PathLike | None = None) -> Path | None:
    """The config file in use: the argument, else `$FLYWHEEL_CONFIG`, else ./flywheel.yaml if present."""
    if path is not None:
        return Path(path)
    if os.environ.get("FLYWHEEL_CONFIG"):
        return Path(os.environ["FLYWHEEL_CONFIG"])
    default = Path("flywheel.yaml")
    return default if default.exists() else None


def load_settings(path: str | os.PathLike | None = None, **overrides) -> Settings:
    """Read and validate settings; `overrides` are dotted keys (`train.epochs=2`)."""
    source = config_path(path)
    data: dict = {}
    if source is not None:
        if not source.exists():
            raise ConfigError(f"config file {source} does not exist")
        try:
            data = yaml.safe_load(source.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {source} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {source}: the top level must be a mapping")
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        where = f"config file {source}" if source else "settings"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def parse_overrides(items: Iterable[str] | Mapping[str, str]) -> dict:
    """Overrides in their one spelling, a dotted key and a YAML value, as `load_settings` takes them:
    `train.epochs=2` items (the command line's `--set`), or {dotted key: YAML text} (a resource's
    config, `format_overrides`). A ConfigError names a bad item."""
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{item!r}: an override is KEY=VALUE with a dotted key: train.epochs=12")
            pairs.append((key, text))
    out = {}
    for key, text in pairs:
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}={text!r}: the value is not valid YAML ({e})") from e
    return out


def format_overrides(values: Mapping[str, object]) -> dict[str, str]:
    """{dotted key: value} as {dotted key: YAML text}, what `parse_overrides` reads back."""
    return {key: json.dumps(value) for key, value in values.items()}  # JSON is YAML


def set_dotted(data: dict, dotted: str, value) -> None:
    """data[a][b][c] = value for `a.b.c`, making the mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def quiet_telemetry() -> None:
    """Turn off the telemetry of Dagster, MLflow and albumentations unless the user set it."""
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
