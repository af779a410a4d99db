"""The only stages that use the network: a hub model and a text dataset, pinned and offline
when cached."""

import logging

from interaction_basis.config import ModelConfig
from interaction_basis.data import hub

log = logging.getLogger(__name__)


def download_model(model: ModelConfig, out: str) -> None:
    """Fetch a hub model (pinned revision; token from HF_TOKEN) or copy a local folder."""
    info = hub.download_model(model.hub.source, model.hub.revision, out)
    log.info("model %s at %s -> %s", info.get("repo_id"), info.get("commit"), out)


def download_dataset(model: ModelConfig, out: str) -> None:
    """Fetch a hub dataset snapshot or copy local text/parquet/jsonl files."""
    info = hub.download_dataset(model.text.source, model.text.revision, out)
    log.info("dataset %s at %s -> %s", info.get("repo_id"), info.get("commit"), out)
