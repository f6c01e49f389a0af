"""Saved models: each under ``HOME/models/<name>/<version>/`` with a card that says what it is.

The card records the version, when and on what window it was trained, the feature list, the metrics of
its evaluation, and the library versions, so a model is never used on features it was not trained on
and an old one can always be told apart from a new one. ``current`` names the version in use; it is
replaced atomically, so a crash mid-save leaves the previous model in place.
"""

from __future__ import annotations

import json
import pickle
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from winback.config import Settings
from winback.errors import BadInputError
from winback.files import written_atomically

#: The models learnt from the event log alone (``winback train all``).
EVENT_MODELS = ("abandonment", "churn", "clv", "segments", "recommend")
#: Every model; ``policy`` is learnt from the decision log with outcomes (``winback outcomes``).
MODEL_NAMES = (*EVENT_MODELS, "policy")
_LIBRARIES = ("winback", "lightgbm", "scikit-learn", "scipy", "numpy", "pandas", "ibis-framework", "implicit")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class ModelCard:
    """What a saved model is: enough to reproduce, compare and refuse to misuse it."""

    name: str
    features: list[str]
    as_of: str
    train_window: tuple[str, str]
    engine: str = "duckdb"
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    version: str = ""
    trained_at: str = ""
    libraries: dict[str, str] = field(default_factory=library_versions)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_dir(settings: Settings, name: str) -> Path:
    if name not in MODEL_NAMES:
        raise BadInputError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return settings.models_dir / name


def save_model(settings: Settings, model: Any, card: ModelCard) -> ModelCard:
    """Write ``model`` and its card as a new version and make it current; returns the completed card."""
    directory = _model_dir(settings, card.name)
    now = datetime.now(UTC)
    card.trained_at = now.isoformat(timespec="seconds")
    card.version = now.strftime("%Y%m%dT%H%M%S%fZ")
    with written_atomically(directory / card.version) as staging:
        staging.mkdir()
        with open(staging / "model.pkl", "wb") as fh:
            pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
        (staging / "card.json").write_text(json.dumps(card.as_dict(), indent=2, default=str) + "\n")
    with written_atomically(directory / "current") as pointer:
        pointer.write_text(card.version + "\n")
    return card


def load_card(settings: Settings, name: str, version: str | None = None) -> ModelCard:
    """The card of the current (or the named) version; a clear error if the model was never trained."""
    directory = _model_dir(settings, name)
    if version is None:
        pointer = directory / "current"
        if not pointer.exists():
            raise BadInputError(
                f"no {name} model in {settings.models_dir}: train one first with `winback train {name}`"
            )
        version = pointer.read_text().strip()
    path = directory / version / "card.json"
    if not path.exists():
        raise BadInputError(f"{name} model version {version} not found in {directory}")
    data = json.loads(path.read_text())
    data["train_window"] = tuple(data["train_window"])
    return ModelCard(**data)


def load_model(
    settings: Settings, name: str, *, features: list[str] | tuple[str, ...] | None = None
) -> tuple[Any, ModelCard]:
    """The current model and its card; refuses one trained on other features than ``features``."""
    card = load_card(settings, name)
    if features is not None and list(features) != list(card.features):
        missing = [f for f in card.features if f not in features]
        extra = [f for f in features if f not in card.features]
        raise BadInputError(
            f"the {name} model {card.version} was trained on other features than this winback computes "
            f"(missing now: {missing or 'none'}; new: {extra or 'none'}; or their order changed): "
            f"retrain it with `winback train {name}`"
        )
    with open(settings.models_dir / name / card.version / "model.pkl", "rb") as fh:
        model = pickle.load(fh)  # our own file in the winback home, written by save_model
    return model, card
