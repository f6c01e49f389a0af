"""A learned ranker: LightGBM trained on the candidates' features, then served as plain arrays.

The ``winback`` use gathers candidates from every source and describes each (customer, candidate) pair
with features (:mod:`.slate`); :class:`LearnedRanker` learns from the purchases that followed such lists
how to order them, instead of fixed weights per source. LightGBM's ``lambdarank`` objective orders each
customer's candidates to maximise NDCG (``binary`` is the other choice: a purchase probability per pair).

Why the trees are served as NumPy arrays (:class:`Forest`) and not by ``Booster.predict``: a query
scores one customer's ~100 candidates, where LightGBM's Python entry point costs more than the trees
(its predictor is set up anew on every call, and OpenMP waits on busy cores: p99 of 25 ms measured for
150 rows on this machine under load), whereas walking every tree at once, one level per step, is a few
array operations per level whose cost does not depend on other work. The arrays give LightGBM's scores
(tested to 1e-9), and they pickle with the model without LightGBM's own text format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from winback.errors import BadInputError

OBJECTIVES = ("lambdarank", "binary")


@dataclass(frozen=True)
class Forest:
    """Every tree of a LightGBM model as flat node arrays; a leaf points to itself on both sides, so
    walking ``depth`` steps from the roots ends at every row's leaf whatever the tree's shape."""

    feature: np.ndarray  # int: split feature (0 at a leaf)
    threshold: np.ndarray  # float: go left when x <= threshold (+inf at a leaf)
    nan_left: np.ndarray  # bool: where a missing value goes
    left: np.ndarray  # int: node index
    right: np.ndarray  # int: node index
    value: np.ndarray  # float: leaf value (0 inside)
    roots: np.ndarray  # int: each tree's first node
    depth: int

    @classmethod
    def from_dump(cls, dump: dict[str, Any]) -> Forest:
        """The forest of ``Booster.dump_model()`` (numerical splits only)."""
        feature: list[int] = []
        threshold: list[float] = []
        nan_left: list[bool] = []
        left: list[int] = []
        right: list[int] = []
        value: list[float] = []
        roots: list[int] = []
        depth = 0

        def add(node: dict[str, Any], level: int) -> int:
            nonlocal depth
            at = len(feature)
            feature.append(0)
            threshold.append(np.inf)
            nan_left.append(True)
            left.append(at)
            right.append(at)
            value.append(0.0)
            if "leaf_value" in node:
                value[at] = float(node["leaf_value"])
                depth = max(depth, level)
                return at
            if node.get("decision_type", "<=") != "<=":
                raise BadInputError("learned ranker: only numerical splits can be served")
            feature[at] = int(node["split_feature"])
            threshold[at] = float(node["threshold"])
            missing = node.get("missing_type", "None")
            if missing == "Zero":
                raise BadInputError("learned ranker: zero-as-missing splits are not supported")
            # LightGBM: with missing type NaN a missing value takes the default side; with None it is
            # read as 0 and compared.
            if missing == "None":
                nan_left[at] = threshold[at] >= 0.0
            else:
                nan_left[at] = bool(node["default_left"])
            left[at] = add(node["left_child"], level + 1)
            right[at] = add(node["right_child"], level + 1)
            return at

        for tree in dump["tree_info"]:
            roots.append(add(tree["tree_structure"], 0))
        return cls(
            np.array(feature, dtype=np.intp),
            np.array(threshold, dtype=float),
            np.array(nan_left, dtype=bool),
            np.array(left, dtype=np.intp),
            np.array(right, dtype=np.intp),
            np.array(value, dtype=float),
            np.array(roots, dtype=np.intp),
            depth,
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The raw score of each row of ``x`` (rows x features, NaN for missing): the sum of its leaves."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 2:
            raise BadInputError(f"learned ranker: expected a 2-d feature matrix, got {x.ndim} dimensions")
        if not self.roots.size or not x.shape[0]:
            return np.zeros(x.shape[0])
        rows = np.arange(x.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (x.shape[0], self.roots.size))
        for _ in range(self.depth):
            values = x[rows, self.feature[node]]
            go_left = np.where(np.isnan(values), self.nan_left[node], values <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node].sum(axis=1)


class LearnedRanker:
    """LightGBM over candidate features, grouped by customer.

    Parameters
    ----------
    objective
        ``lambdarank`` (orders each customer's candidates, NDCG) or ``binary`` (a probability per pair).
    n_estimators, learning_rate, num_leaves, max_depth, min_child_samples
        LightGBM's; ``max_depth`` also bounds the steps of :meth:`Forest.predict`.
    early_stopping_rounds
        Stop adding trees when the validation customers' NDCG@10 has not improved for this many.
    base
        A feature the trees start from and correct (LightGBM's initial score), or None: with few
        examples early stopping keeps few trees, and a handful of trees alone order a list coarsely
        (their scores are steps; measured on a 600-customer shop: 5 trees, recall@10 0.19 against the
        blend's 0.28), whereas the base keeps every distinction it makes.
    base_scale
        The base feature's weight in the score.
    threads
        LightGBM threads (0: its default, all cores). One by default: the data are small, and on two
        busy cores OpenMP's waiting made 80 rounds on 20,000 pairs take 27 s instead of 1.9 s.
    random_state
        Seed of LightGBM's sampling.

    Attributes
    ----------
    forest_ : Forest, the trained trees as arrays
    features_ : tuple of feature names (column order)
    best_iteration_ : int, trees kept
    importance_ : dict feature -> total gain
    """

    def __init__(
        self,
        objective: str = "lambdarank",
        n_estimators: int = 1000,
        learning_rate: float = 0.03,
        num_leaves: int = 7,
        max_depth: int = 6,
        min_child_samples: int = 50,
        early_stopping_rounds: int = 50,
        base: str | None = None,
        base_scale: float = 1.0,
        threads: int = 1,
        random_state: int = 0,
    ) -> None:
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.base = base
        self.base_scale = base_scale
        self.threads = threads
        self.random_state = random_state

    def _params(self) -> dict[str, Any]:
        if self.objective not in OBJECTIVES:
            raise BadInputError(f"objective {self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if not 1 <= self.max_depth <= 16:
            raise BadInputError(f"max_depth {self.max_depth!r}: expected an integer from 1 to 16")
        params: dict[str, Any] = {
            "objective": self.objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "seed": self.random_state,
            "deterministic": True,
            "verbosity": -1,
        }
        if self.threads:
            params["num_threads"] = self.threads
        if self.objective == "lambdarank":
            params["eval_at"] = [10]
            params["metric"] = "ndcg"
        else:
            params["metric"] = "binary_logloss"
        return params

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray,
        features: tuple[str, ...],
        validation: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> LearnedRanker:
        """Learn from ``x`` (pairs x features), labels ``y`` (relevance >= 0) and ``groups`` (each
        customer's number of consecutive rows); with ``validation`` (x, y, groups), stop early on it."""
        import lightgbm as lgb  # imported when learning only: serving needs the arrays

        if x.shape != (len(y), len(features)) or int(np.sum(groups)) != len(y):
            raise BadInputError(
                f"learned ranker: {x.shape} features, {len(y)} labels and groups of {int(np.sum(groups))} "
                f"rows for {len(features)} feature names do not match"
            )
        params = self._params()
        names = list(features)
        if self.base is not None and self.base not in names:
            raise BadInputError(f"base {self.base!r}: not one of the features")
        self.features_ = tuple(features)
        self._base_column = names.index(self.base) if self.base is not None else None
        train = lgb.Dataset(
            x, label=y, group=groups, feature_name=names, init_score=self._base_score(x), free_raw_data=True
        )
        sets: list[Any] = []
        callbacks: list[Any] = []
        if validation is not None:
            vx, vy, vg = validation
            sets = [
                lgb.Dataset(
                    vx,
                    label=vy,
                    group=vg,
                    reference=train,
                    feature_name=names,
                    init_score=self._base_score(vx),
                )
            ]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        booster = lgb.train(
            params, train, num_boost_round=self.n_estimators, valid_sets=sets, callbacks=callbacks
        )
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.forest_ = Forest.from_dump(booster.dump_model(num_iteration=self.best_iteration_))
        gains = booster.feature_importance("gain", iteration=self.best_iteration_)
        self.importance_ = {n: float(g) for n, g in zip(names, gains, strict=True)}
        self._booster_text = booster.model_to_string(num_iteration=self.best_iteration_)
        return self

    def _base_score(self, x: np.ndarray) -> np.ndarray:
        """The base feature's part of the score (0 without one; a missing value counts 0)."""
        if self._base_column is None:
            return np.zeros(len(x))
        return self.base_scale * np.nan_to_num(np.asarray(x, dtype=float)[:, self._base_column])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores of the rows of ``x``: higher ranks first (raw scores; for ``binary``, log-odds)."""
        return self._base_score(x) + self.forest_.predict(x)

    def booster(self) -> Any:
        """The trained LightGBM booster (rebuilt from its text): for inspection and tests."""
        import lightgbm as lgb

        return lgb.Booster(model_str=self._booster_text)
