"""The report API and the participant page (FastAPI): `create_app(...)`."""

from crunch_assets.api.app import create_app
from crunch_assets.api.competitions import ReportCompetition, load_report_competition

__all__ = ["ReportCompetition", "create_app", "load_report_competition"]
