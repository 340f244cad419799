"""Suite scheduling (the repository root's conftest, so that the pytest-xdist controller reads it too).

Under ``-n 2 --dist loadfile`` xdist hands out test files in queue order and, by default, queues files
with more tests first. The suite's long files have few tests (the demo recipe end to end, ~3.5 min, has
two), so they ran last and one worker idled while the other finished them. Here the queue keeps the
collection order, and the collection puts the longest files first (longest-processing-time first).
"""

# Measured with ``--durations`` on the 2-core CI machine (2026-11-25), longest first. A file missing here
# keeps its place after these; keep the list to the files of more than ~40 s.
LONGEST_FIRST = (
    "tests/test_demo_recipe.py",
    "tests/test_multihost.py",
    "tests/test_train_gpt.py",
    "tests/test_train_vocoder.py",
    "tests/test_train_s2mel.py",
    "tests/test_train_codec.py",
    "tests/test_export_workdir.py",
)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist present
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    order = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(item.nodeid.split("::")[0], len(rank)), order[id(item)]))
