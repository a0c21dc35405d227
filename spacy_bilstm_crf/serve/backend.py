"""The backend as a plain object: what each of Label Studio's calls does, without HTTP.

`Backend` serves one model version at a time (a `Tagger`, swapped whole when training makes
a new one), remembers each project's labeling config, journals annotation events before it
answers, and tells its `Trainer` when enough came in. Tag names (`from_name`, `to_name`),
the text field and the labels come from the labeling config of each request, so projects
with different configs are each answered in their own names. Labels that the model has and
the config lacks (never predicted there) or that the config has and the model lacks (never
found) are reported in `/setup`'s answer and logged once per project, config and model;
a config that shares no label with the model is an error, not silent empty predictions.
"""

import logging
import threading
from typing import Any

from ..active.label_config import LabelConfig
from .journal import Journal
from .protocol import (
    ANSWER_ACTIONS,
    DELETE_ACTIONS,
    Fixes,
    ProtocolError,
    answer_events,
    config_of,
    context_fixes,
    deleted_ids,
    need_object,
    project_id,
    region_record,
    task_text,
    tasks_of,
    train_events,
)
from .tagger import Tagger
from .trainer import Trainer
from .versions import Version

log = logging.getLogger(__name__)


class Backend:
    """Answers Label Studio's calls; `tagger` is the version served now."""

    def __init__(self, tagger: Tagger, journal: Journal, trainer: Trainer | None = None) -> None:
        self.tagger = tagger
        self.journal = journal
        self.trainer = trainer
        self._configs: dict[str, LabelConfig] = {}
        self._reported: set[tuple[str, LabelConfig, tuple[str, ...]]] = set()
        self._lock = threading.Lock()

    def install(self, version: Version) -> None:
        """Load a new version and serve it from the next request on (one reference swap:
        a prediction under way finishes on the version it started with)."""
        tagger = Tagger(version.path, version.name, threads=self.tagger.pipe.cfg["threads"])
        self.tagger = tagger
        log.info("now serving %s", version.name)

    def health(self) -> dict[str, Any]:
        status = {"status": "UP", "model_class": "BiLSTMCRF", "model_version": self.tagger.version}
        if self.trainer is not None:
            status.update(self.trainer.status())
        return status

    def setup(self, body: Any) -> dict[str, Any]:
        """`/setup`: remember the project's config; the model version and label mismatches."""
        body = need_object(body)
        project = project_id(body.get("project"))
        config = config_of(body.get("schema"))
        if config is None:
            raise ProtocolError("'/setup' needs 'schema': the project's labeling config")
        tagger = self.tagger
        self._remember(project, config)
        report = self._check_labels(project, config, tagger)
        return {"model_version": tagger.version, **report}

    def predict(self, body: Any) -> dict[str, Any]:
        """`/predict`: one prediction per task, in the project's names; with the annotator's
        regions in the context, the whole text re-decoded around them."""
        body = need_object(body)
        tasks = tasks_of(body)
        project = project_id(body.get("project")) if body.get("project") else ""
        config = config_of(body.get("label_config")) or self._configs.get(project)
        if config is None:
            raise ProtocolError("'/predict' needs 'label_config' (or an earlier '/setup')")
        tagger = self.tagger  # one version for the whole request
        self._check_labels(project, config, tagger)
        texts = [task_text(task, config) for task in tasks]
        for task, text in zip(tasks, texts):
            if len(text) > tagger.max_chars:
                raise ProtocolError(
                    f"task {task.get('id', '?')}: {len(text):,} characters, more than the "
                    f"pipeline's max_length {tagger.max_chars:,}",
                    413,
                )
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        fixes = context_fixes(params.get("context"), config, texts[0] if texts else "")
        if fixes and len(tasks) != 1:
            raise ProtocolError("an interactive context goes with exactly one task")
        if fixes:
            return {"results": [self._redecode(tagger, config, texts[0], fixes)]}
        results = []
        for text, found in zip(texts, tagger.predict(texts)):
            regions = [
                region_record(config, text, start, end, label, prob)
                for start, end, label, prob in found.entities
                if label in config.labels
            ]
            results.append(_prediction(regions, found.score, tagger.version))
        return {"results": results}

    def _redecode(self, tagger: Tagger, config: LabelConfig, text: str, fixes: Fixes) -> dict:
        """The whole text re-decoded around the annotator's regions: theirs as they sent
        them, every other region the model's under them, with its conditional probability."""
        entities = [(region.start, region.end, region.label) for region in fixes.regions]
        try:
            found = tagger.redecode(text, entities, fixes.outside)
        except ValueError as error:  # fixes that overlap, or that no analysis satisfies
            raise ProtocolError(f"the annotator's regions cannot all hold: {error}") from None
        person = {(r.start, r.end, r.label): r.raw for r in fixes.regions}
        regions = [
            person.get((start, end, label)) or region_record(config, text, start, end, label, prob)
            for start, end, label, prob in found.entities
            if label in config.labels or (start, end, label) in person
        ]
        return _prediction(regions, found.score, tagger.version)

    def webhook(self, body: Any) -> tuple[int, dict[str, Any]]:
        """`/webhook`: annotation events journaled (fsync'd) before the answer; training
        asked for on `START_TRAINING`; other events acknowledged and ignored."""
        body = need_object(body)
        action = body.get("action")
        if not isinstance(action, str):
            raise ProtocolError("a webhook needs an 'action'", 400)
        if action == "START_TRAINING":
            return 201, self._start_training()
        if action in DELETE_ACTIONS:
            project = project_id(body.get("project"))
            seq = self.journal.add_deletes(project, deleted_ids(body))
            self._noted()
            return 201, {"status": "ok", "journal": seq}
        if action not in ANSWER_ACTIONS:
            return 200, {"status": "ignored", "action": action}
        project = project_id(body.get("project"))
        config = self._config_from(body.get("project"), project)
        events = list(answer_events(action, body, config))
        seq = self.journal.add_answers(action, events)
        self._noted()
        return 201, {"status": "ok", "journal": seq, "events": len(events)}

    def train(self, body: Any) -> dict[str, Any]:
        """`/train`: journal the answers not journaled yet (this call sends them all), then
        train now."""
        body = need_object(body)
        project = project_id(body.get("project"))
        config = config_of(body.get("label_config")) or self._configs.get(project)
        if config is None:
            raise ProtocolError("'/train' needs 'label_config'")
        events = self.journal.new_states(list(train_events(body, config)))
        if events:
            self.journal.add_answers("TRAIN", events)
        return {"journaled": len(events), **self._start_training()}

    def versions(self) -> dict[str, Any]:
        return {"versions": [self.tagger.version], "message": ""}

    def _start_training(self) -> dict[str, Any]:
        if self.trainer is None:
            return {"status": "ok", "training": False, "reason": "training is off"}
        if not self.trainer.ask():
            reason = f"no answers since {self.tagger.version} was trained"
            return {"status": "ok", "training": False, "reason": reason}
        return {"status": "ok", "training": True}

    def _noted(self) -> None:
        if self.trainer is not None:
            self.trainer.noted()

    def _config_from(self, project_body: Any, project: str) -> LabelConfig:
        config = None
        if isinstance(project_body, dict):
            config = config_of(project_body.get("label_config"))
        config = config or self._configs.get(project)
        if config is None:
            raise ProtocolError("the webhook's project carries no 'label_config'")
        self._remember(project, config)
        return config

    def _remember(self, project: str, config: LabelConfig) -> None:
        with self._lock:
            self._configs[project] = config

    def _check_labels(self, project: str, config: LabelConfig, tagger: Tagger) -> dict:
        """The label mismatches, logged once per project, config and model labels; an error
        when the config and the model share no label."""
        not_in_config, not_in_model = config.differences(tagger.labels)
        if not set(config.labels) & set(tagger.labels):
            raise ProtocolError(
                f"the labeling config's labels {list(config.labels)} and the model's "
                f"{list(tagger.labels)} have none in common: nothing could be predicted"
            )
        warnings = []
        if not_in_config:
            warnings.append(
                f"the model's labels {not_in_config} are not in the config: never predicted"
            )
        if not_in_model:
            warnings.append(
                f"the config's labels {not_in_model} are not the model's: never predicted"
            )
        key = (project, config, tagger.labels)
        with self._lock:
            first = key not in self._reported
            self._reported.add(key)
        for warning in warnings if first else []:
            log.warning("project %s: %s", project or "?", warning)
        return {
            "labels": {"not_in_config": not_in_config, "not_in_model": not_in_model},
            "warnings": warnings,
        }


def _prediction(regions: list[dict[str, Any]], score: float, version: str) -> dict[str, Any]:
    return {"result": regions, "score": round(float(score), 6), "model_version": version}
