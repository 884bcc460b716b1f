"""The data path, one module per stage: capture → encode → transport → decode → playback.

The stage contract: a stage is an async function (or a small class with an async ``run``) that
takes the ends of bounded trio memory channels, typed with the ``trio.abc`` channel ABCs. It owns
and closes the ends it is given with ``async with``, so that closing the first channel drains and
closes every one after it. Long-lived stages take ``task_status`` and call ``started()`` only when
they are truly ready. Each channel's size and what happens when it is full are written where the
channel is opened (``voiced/pipeline.py``).
"""
