"""Progress bars only on a terminal: in a log file or a pipe a bar's redraws would be hundreds of kilobytes."""

from __future__ import annotations

from tqdm import tqdm


def progress_bar(iterable, progress: bool = True, **options) -> tqdm:
    """``tqdm(iterable)``, drawn when ``progress`` is asked for and stderr is a terminal (tqdm's ``disable=None``);
    otherwise silent, so the callers' plain line per epoch or per run is all a log gets."""
    return tqdm(iterable, disable=None if progress else True, **options)
