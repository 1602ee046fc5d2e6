"""The Hugging Face Hub, through huggingface_hub: uploading a saved adapter folder."""

from __future__ import annotations

import os
from typing import Any

from ..errors import HubError

__all__ = ["upload_folder"]


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    commit_message: str,
    private: bool | None,
    token: str | None,
    revision: str | None,
    create_pr: bool,
) -> Any:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns huggingface_hub's commit
    info.

    Raises:
        HubError: offline (``HF_HUB_OFFLINE``), no network, no token or no permission, in one
            paragraph.
    """
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"cannot push to {repo_id}: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1). "
            f"The adapter itself is fine: save it with save_pretrained(folder) and upload that folder "
            "from a machine with a network (huggingface-cli upload REPO FOLDER)"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            folder_path=os.fspath(folder),
            repo_id=repo_id,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )
    # network, auth and permission errors come in many types; all mean "not pushed"
    except Exception as err:
        raise HubError(
            f"cannot push to {repo_id}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ". Check the network and that you are logged in (huggingface-cli login) with write access; "
            "or save the adapter with save_pretrained(folder) and upload it later"
        ) from err
