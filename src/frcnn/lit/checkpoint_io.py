"""Lightning's checkpoints (``last.ckpt``, the SIGTERM checkpoint) written by frcnn's atomic writer.

Lightning 2.x (``TorchCheckpointIO`` -> ``lightning.fabric.utilities.cloud_io._atomic_save``)
serialises the checkpoint in memory, writes it inside an fsspec transaction to a file made by
``tempfile.mkstemp()`` -- in the system temp dir ($TMPDIR, /tmp), not beside the checkpoint -- and
commits with ``shutil.move``. When /tmp and the run dir are different file systems (the usual case
on a cluster: node-local /tmp, shared run dir), that move is a copy *into* ``last.ckpt`` itself, so
a full disk or an I/O error during the copy destroys the previous good checkpoint; and a full /tmp
fails the save naming a temp file, not the checkpoint. No fsync either, so a late ENOSPC / EIO may
go unseen. Here the same ``torch.save`` goes through :func:`frcnn.utils.atomic_io.atomic_torch_save`:
``last.ckpt.tmp`` beside the target, fsync, rename; on failure the .tmp is removed and the old
``last.ckpt`` stays loadable.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from frcnn.utils.atomic_io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose save is frcnn's atomic, fsync'ed, same-directory write (loading unchanged)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        atomic_torch_save(checkpoint, path)
