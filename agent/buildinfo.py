"""Facts about this build. build.py rewrites this file in the zipapp's copy of the package."""

COMMIT = "source"  # the git commit the zipapp was built from; "source" when run from a checkout
BUILT_FOR = ""  # the target platform of the zipapp (e.g. manylinux2014_x86_64)
