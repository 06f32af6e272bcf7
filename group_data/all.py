"""Settings for every host. Plain values only; each is declared in rave/settings/."""

__all__ = ["rave_mode", "timezone"]

rave_mode = "SAFE"
timezone = "UTC"
