"""The recsynth pipeline: ten steps, training gated on the privacy ledger, deployment on the audit.

::

    ingest -> budget_check -> generate -> fuse -> train -> dp_audit
        passed:   export -> register_features -> deploy -> report (deployed)
        failed:   report (deployment blocked)

The gate is a ``dsl.If`` on dp_audit's ``passed`` output with a ``dsl.Else``. Each branch ends in
its own report task: the passed branch hands the report the export, feature store and deployment
artifacts; the failed branch leaves those optional inputs unset, so the report says deployment was
blocked. Deploy sits inside the passed branch only, so a failed audit never touches the servers
that are running.

budget_check fails the run, before any training, when the run's epsilon_budget would take the
dataset's cumulative epsilon in the privacy ledger past ``run.lifetime_epsilon_budget``; dp_audit
records what the run spent against the same dataset hash.
"""

# No `from __future__ import annotations` here: KFP reads the pipeline's parameter annotations
# when it is decorated, and postponed (string) annotations fail its type checks.
from kfp import dsl

from components.budget_check.component import budget_check
from components.common.errors import ConfigError
from components.deploy.component import deploy
from components.dp_audit.component import dp_audit
from components.export.component import export
from components.fuse.component import fuse
from components.generate.component import generate
from components.ingest.component import ingest
from components.register_features.component import register_features
from components.report.component import report
from components.train.component import train

PIPELINE_NAME = "recsynth"
# Task names as KFP assigns them (from the component names; the second report gets a suffix).
REPORT_DEPLOYED_TASK = "report"
REPORT_BLOCKED_TASK = "report-2"
STEP_TASKS = (
    "ingest",
    "budget-check",
    "generate",
    "fuse",
    "train",
    "dp-audit",
    "export",
    "register-features",
    "deploy",
    REPORT_DEPLOYED_TASK,
    REPORT_BLOCKED_TASK,
)


LEDGER_MOUNT_PATH = "/mnt/recsynth-ledger"


def mount_ledger(task: dsl.PipelineTask, ledger_pvc: str | None) -> dsl.PipelineTask:
    """Mount the PVC that holds the privacy ledger into ``task`` at :data:`LEDGER_MOUNT_PATH`.

    On a cluster every step runs in its own pod, so a ledger on the pod's disk would be lost with
    it and every run would see an empty one. The two steps that read and append it (budget_check,
    dp_audit) mount one shared PVC instead; ``run.ledger_path`` must then point under the mount,
    e.g. ``/mnt/recsynth-ledger/privacy-ledger.jsonl``. Local runs ignore the mount.

    Raises:
        ConfigError: a PVC is asked for but kfp-kubernetes is not installed.
    """
    if ledger_pvc is None:
        return task
    try:
        from kfp import kubernetes
    except ImportError as exc:
        raise ConfigError(
            f"ledger_pvc={ledger_pvc!r} needs the kfp-kubernetes package to mount the PVC"
        ) from exc
    return kubernetes.mount_pvc(task, pvc_name=ledger_pvc, mount_path=LEDGER_MOUNT_PATH)


def make_pipeline(ledger_pvc: str | None = None):  # -> a KFP pipeline function
    """The recsynth pipeline, with the privacy ledger on the PVC ``ledger_pvc`` when given.

    Args:
        ledger_pvc: name of an existing PersistentVolumeClaim (ReadWriteMany when runs may
            overlap) mounted at :data:`LEDGER_MOUNT_PATH` in budget_check and dp_audit; None
            keeps the ledger wherever ``run.ledger_path`` points (local runs).
    """

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Shop logs -> DP synthetic sessions -> DP sequential recommender; the DP audit gates "
            "ONNX export, Feast registration and KServe deployment."
        ),
    )
    def recsynth_pipeline(config: dict, source: str = "bundled", run_id: str = "local"):
        """The whole run.

        Args:
            config: the validated run config as a plain dict (``RecsynthConfig.model_dump``).
            source: the shop log: "bundled" or a path/URI the ingest step can read.
            run_id: the run's id, recorded by deploy and in the privacy ledger.
        """
        cleaned = ingest(config=config, source=source)
        checked = budget_check(config=config, cleaned=cleaned.outputs["cleaned"], run_id=run_id)
        mount_ledger(checked, ledger_pvc)
        gen = generate(config=config, cleaned=cleaned.outputs["cleaned"])
        # No training starts before the ledger allowed the run.
        gen.after(checked)
        fused = fuse(
            config=config,
            cleaned=cleaned.outputs["cleaned"],
            synthetic=gen.outputs["synthetic"],
        )
        trained = train(config=config, training_set=fused.outputs["training_set"])
        audited = dp_audit(
            config=config,
            cleaned=cleaned.outputs["cleaned"],
            generator_model=gen.outputs["generator_model"],
            synthetic=gen.outputs["synthetic"],
            training_set=fused.outputs["training_set"],
            recommender_model=trained.outputs["recommender_model"],
            dataset_sha256=checked.outputs["dataset_sha256"],
            run_id=run_id,
        )
        mount_ledger(audited, ledger_pvc)
        common = {
            "config": config,
            "cleaned": cleaned.outputs["cleaned"],
            "generator_model": gen.outputs["generator_model"],
            "synthetic": gen.outputs["synthetic"],
            "training_set": fused.outputs["training_set"],
            "recommender_model": trained.outputs["recommender_model"],
            "audit": audited.outputs["audit"],
        }

        with dsl.If(audited.outputs["passed"] == True, name="audit-passed"):  # noqa: E712
            exported = export(
                config=config,
                generator_model=gen.outputs["generator_model"],
                recommender_model=trained.outputs["recommender_model"],
                training_set=fused.outputs["training_set"],
            )
            features = register_features(
                config=config,
                cleaned=cleaned.outputs["cleaned"],
                training_set=fused.outputs["training_set"],
            )
            # Sequential on purpose: the steps share two cores, and a failed export should stop the
            # branch before the feature store is touched.
            features.after(exported)
            deployed = deploy(
                config=config,
                run_id=run_id,
                exported=exported.outputs["exported"],
                feature_store=features.outputs["feature_store"],
            )
            report(
                **common,
                exported=exported.outputs["exported"],
                feature_store=features.outputs["feature_store"],
                deployment=deployed.outputs["deployment"],
            ).set_display_name("report (deployed)")
        with dsl.Else(name="audit-failed"):
            report(**common).set_display_name("report (deployment blocked)")

    return recsynth_pipeline


recsynth_pipeline = make_pipeline()
