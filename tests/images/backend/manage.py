"""Stand-in for Django's manage.py: only `python manage.py subscriber` is supported."""
import sys

sys.path.insert(0, "/opt/standin")
import standin

if sys.argv[1:] != ["subscriber"]:
    standin.log(f"manage.py stand-in: unsupported arguments {sys.argv[1:]}")
    sys.exit(2)
standin.main(["backend-subscriber"])
