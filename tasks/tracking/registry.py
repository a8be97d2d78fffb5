"""Registry aliases: training moves ``candidate`` to each new version; ``champion`` moves only to a
model that reaches ``tracking.min_test_score`` and beats the current one on the test set.

The score compared is ``tracking.promote_on``: test Dice (default), or an object-level one (object F1 at
IoU 0.5, panoptic quality; :mod:`tasks.evaluation.object_metrics`) for data whose point is telling touching
objects apart. The champion's value is read from its own run's metric of the same name. A champion scored
before that metric existed (no such metric in its run) cannot be compared with: the candidate is promoted
if it reaches the floor, as for a champion without test Dice, and the reason says so; refusing instead would
keep that champion forever. A candidate without the metric (``object_f1``/``pq`` on data without instance
maps) is never promoted: the champion stays and the reason says why.

Reading the champion must not fail open: an unreachable or damaged store is an error, never "no
champion yet", or a store outage would promote whatever model was trained last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.tracking.store import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
# tracking.promote_on → (the MLflow metric / evaluation key, how reasons name it)
PROMOTION_METRICS = {"test_dice": ("test_dice", "test Dice"), "object_f1": ("test_object_f1", "test object F1@0.5"),
                     "pq": ("test_pq", "test PQ")}


@dataclass
class PromotionDecision:
    promoted: bool
    version: str
    reason: str
    previous_champion: str | None = None


def decide_promotion(candidate_dice: float, champion_dice: float | None,
                     min_score: float = 0.0, label: str = "test Dice") -> tuple[bool, str]:
    """Pure rule, testable on its own: at least ``min_score`` (``tracking.min_test_score``, the first model
    included), then strictly better score (``label`` names it: test Dice by default) on the same test set
    than the champion's."""
    if not candidate_dice >= min_score:  # NaN (no test case scored) fails too
        return False, f"{label} {candidate_dice:.4f} is below tracking.min_test_score {min_score:.4f}"
    if champion_dice is None:
        return True, f"no champion yet ({label} {candidate_dice:.4f} ≥ tracking.min_test_score {min_score:.4f})"
    if candidate_dice > champion_dice:
        return True, f"{label} {candidate_dice:.4f} beats champion's {champion_dice:.4f}"
    return False, f"{label} {candidate_dice:.4f} does not beat champion's {champion_dice:.4f}"


def read_champion(client: MlflowClient, model_name: str,
                  metric: str = "test_dice") -> tuple[ModelVersion | None, float | None]:
    """(champion version, its run's ``metric``: test Dice by default), or (None, None) when the model or
    its alias does not exist; (version, None) when the champion's run lacks the metric.

    The alias is looked up in the registered model's ``aliases`` rather than through
    ``get_model_version_by_alias``, whose "alias not found" is a generic ``INVALID_PARAMETER_VALUE``
    that a damaged alias row raises too; so only a missing registered model (``RESOURCE_DOES_NOT_EXIST``
    on the one call that can only mean that) or an absent alias means "no champion". Any other error
    (store unreachable or damaged, a dangling alias, the champion's run gone) raises ``TrackingError``.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None, None
        raise _unreadable(model_name, error) from error
    version = registered.aliases.get(CHAMPION_ALIAS)
    if version is None:
        return None, None
    try:
        champion = client.get_model_version(model_name, str(version))
        dice = client.get_run(champion.run_id).data.metrics.get(metric) if champion.run_id else None
    except MlflowException as error:
        raise _unreadable(model_name, error) from error
    return champion, dice


def _unreadable(model_name: str, error: Exception) -> TrackingError:
    import mlflow

    return TrackingError(f"cannot read the {CHAMPION_ALIAS!r} of registered model {model_name!r} from the "
                         f"MLflow registry {mlflow.get_registry_uri()}, so nothing was promoted: {error}")


def promote_if_better(model_name: str, version: str, run_id: str, candidate_dice: float | None,
                      min_score: float = 0.0, promote_on: str = "test_dice") -> PromotionDecision:
    """Move ``champion`` to ``version`` if it reaches ``min_score`` and beats the champion on ``promote_on``
    (``tracking.promote_on``; ``candidate_dice`` is the candidate's value of it, None when the test set could
    not give it); record the decision.

    The run gets the tags ``unetflow.promoted`` / ``unetflow.promotion_reason``; the version the tags
    ``promoted``, ``promotion_reason`` and ``test_dice`` and a description saying the same, so the registry
    page alone tells why a version is (not) the champion. Raises ``TrackingError`` (and changes nothing)
    when the champion cannot be read.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    metric, label = PROMOTION_METRICS[promote_on]
    champion, champion_dice = read_champion(client, model_name, metric)
    if candidate_dice is None:  # e.g. object F1 asked for, but the test cases have no instance maps
        promoted, reason = False, (f"tracking.promote_on is {promote_on} but the candidate has no {label} (its "
                                   "test cases have no instance maps), so it is not compared; the champion stays")
        candidate_dice = float("nan")
    else:
        promoted, reason = decide_promotion(candidate_dice, champion_dice, min_score, label)
    if champion is not None and champion_dice is None and promoted:  # not "no champion yet"
        reason = (f"champion version {champion.version} has no {label} to compare with; promoted on "
                  f"tracking.min_test_score alone ({label} {candidate_dice:.4f} ≥ {min_score:.4f})")
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    client.set_tag(run_id, "unetflow.promoted", str(promoted).lower())
    client.set_tag(run_id, "unetflow.promotion_reason", reason)
    for key, value in (("promoted", str(promoted).lower()), ("promotion_reason", reason),
                       (metric, f"{candidate_dice:.4f}")):
        client.set_model_version_tag(model_name, version, key, value)
    client.update_model_version(model_name, version, description=(
        f"{label} {candidate_dice:.4f}; {'promoted to champion' if promoted else 'not promoted'}: {reason}"))
    return PromotionDecision(promoted, version, reason, None if champion is None else champion.version)
