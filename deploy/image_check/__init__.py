"""``make image-check``: the image built with podman and run as the Helm chart would (docs/DEPLOY.md).

``python -m deploy.image_check [--flavor cpu|gpu]``; the steps are in :mod:`deploy.image_check.__main__`.
"""
