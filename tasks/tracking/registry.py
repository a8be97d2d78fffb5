"""Champion promotion: the alias ``champion`` moves only to a model that beats the current one."""

from __future__ import annotations

from dataclasses import dataclass

CHAMPION_ALIAS = "champion"


@dataclass
class PromotionDecision:
    promoted: bool
    version: str
    reason: str
    previous_champion: str | None = None


def decide_promotion(candidate_dice: float, champion_dice: float | None) -> tuple[bool, str]:
    """Pure rule, testable on its own: strictly better test Dice on the same test set wins."""
    if champion_dice is None:
        return True, "no champion yet"
    if candidate_dice > champion_dice:
        return True, f"test Dice {candidate_dice:.4f} beats champion's {champion_dice:.4f}"
    return False, f"test Dice {candidate_dice:.4f} does not beat champion's {champion_dice:.4f}"


def promote_if_better(model_name: str, version: str, run_id: str, candidate_dice: float) -> PromotionDecision:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    champion_dice = None
    if champion is not None and champion.run_id:
        champion_dice = client.get_run(champion.run_id).data.metrics.get("test_dice")
    promoted, reason = decide_promotion(candidate_dice, champion_dice)
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    client.set_tag(run_id, "unetflow.promoted", str(promoted).lower())
    client.set_tag(run_id, "unetflow.promotion_reason", reason)
    client.set_model_version_tag(model_name, version, "promoted", str(promoted).lower())
    return PromotionDecision(promoted, version, reason, None if champion is None else champion.version)
