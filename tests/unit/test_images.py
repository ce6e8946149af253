"""The images cannot be built here (no container engine); check what can be checked without one."""

from __future__ import annotations

import re

from tests.conftest import REPOSITORY


def test_predictor_image_runs_as_a_non_root_user_on_a_slim_base() -> None:
    dockerfile = (REPOSITORY / "predictor" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert stages
    assert all(image.endswith("-slim") for image in stages)
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert user
    assert user[1] not in {"root", "0"}
    assert 'ENTRYPOINT ["python", "-m", "steward_predictor"]' in final
    assert "STEWARD_BUNDLE_URI=/mnt/models" in final
    # Every path the image copies exists, so a build does not fail on a moved folder.
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE):
        for path in source.split():
            assert (REPOSITORY / path).exists(), path
