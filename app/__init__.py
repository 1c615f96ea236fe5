"""AniBridge service state: FastAPI + SQLModel with Alembic-managed schema."""
