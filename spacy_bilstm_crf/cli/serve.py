"""`python -m spacy_bilstm_crf serve`: the tagger as a Label Studio ML backend (see
`serve/`): pre-annotations, corrections re-decoded, and a model that learns from each answer."""

import argparse
import logging
from pathlib import Path

from ..serve.server import Options, ServeError, read_credentials, serve


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a pipeline as a Label Studio ML backend that learns from the answers",
        description=(
            "Serve MODEL's bilstm_crf component to Label Studio (its ML backend protocol: "
            "/health, /setup, /predict, /webhook, /train). Predictions take the tag names and "
            "labels of each project's labeling config and carry each entity's probability; "
            "annotation events are journaled in WORK before they are answered; every "
            "--retrain-every events (and on START_TRAINING) the model trains further in the "
            "background on the answers, and the new version is swapped in. A restart with "
            "the same WORK resumes. Basic auth: --auth-file, or BASIC_AUTH_USER and "
            "BASIC_AUTH_PASS in the environment. Needs the serve extra."
        ),
    )
    parser.add_argument("model", help="a pipeline folder or an installed pipeline package")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument(
        "--work",
        default="label-studio-backend",
        help="the folder for the journal and the trained versions (default: %(default)s)",
    )
    parser.add_argument(
        "--train", help="the model's own training data (.spacy), mixed into each retraining"
    )
    parser.add_argument(
        "--retrain-every",
        type=int,
        default=50,
        help="train a new version after this many annotation events (0: only when asked)",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps per version")
    parser.add_argument(
        "--no-training", action="store_true", help="predict only: journal, never retrain"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--auth-file", help="a file holding 'user:password' for basic auth")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.retrain_every < 0 or args.steps < 1 or args.threads < 1:
        raise ServeError("--retrain-every must be 0 or more, --steps and --threads positive")
    if args.train and not Path(args.train).is_file():
        raise ServeError(f"the training data {args.train!r} does not exist")
    credentials = read_credentials(args.auth_file)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = Options(
        model=Path(args.model),
        work=Path(args.work),
        train=Path(args.train) if args.train else None,
        every=args.retrain_every,
        steps=args.steps,
        threads=args.threads,
        training=not args.no_training,
    )
    return serve(options, args.host, args.port, credentials)
