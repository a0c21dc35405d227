"""The tagger as a Label Studio ML backend (`python -m spacy_bilstm_crf serve`).

The protocol apart from what the model does:

- `protocol.py`: what Label Studio sends and reads back, checked (no HTTP, no model);
- `backend.py`: `Backend`, each call as a method of a plain object;
- `app.py`: the HTTP routes (Starlette), thin, and basic auth;
- `tagger.py`: the served version: entities with probabilities, a score per text;
- `journal.py`: annotation events on disk (fsync'd) before the answer; the answers back;
- `retrain.py`, `trainer.py`: training on the answers beside the server;
- `versions.py`: the trained versions' folders, written whole then renamed;
- `server.py`: all of it put together under uvicorn, with a clean stop.
"""
