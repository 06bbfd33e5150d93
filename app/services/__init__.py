"""The service layer between the routes and the job store: request checks, job views,
idempotency, downloads. Routes stay thin; nothing here imports torch."""
