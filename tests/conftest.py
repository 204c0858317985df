"""What every tier of tests shares."""

from hypothesis import settings

# Property tests assert behaviour, never speed: a loaded CI machine must not turn a slow example
# into a failure (performance is measured in bench/).
settings.register_profile("layerwatch", deadline=None)
settings.load_profile("layerwatch")
