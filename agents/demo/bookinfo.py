"""A Bookinfo-like application (productpage, details, reviews v1/v2/v3, ratings) on the stdlib.

Behaviour follows Istio's Bookinfo where it matters for mesh demos: productpage gives up on
details after 3 s and on reviews after 3 s with one retry; reviews v2/v3 call ratings with a
10 s timeout (black / red stars); tracing headers and `end-user` are forwarded downstream.
"""

from __future__ import annotations

import html
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from agents.common.http import App, FetchError, Reply, Request, fetch, json_reply, parse_duration

SERVICE_PORT = 9080
APPS = ("productpage", "details", "reviews", "ratings")

# headers copied from the incoming request to every downstream call
FORWARDED_HEADERS = (
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "user-agent",
    "authorization",
)

DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"

PRODUCT = {
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": (
        "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: "
        "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest "
        "and one of his most farcical comedies, with a major part of the humour coming from slapstick "
        "and mistaken identity, in addition to puns and word play."
    ),
}

REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared "
                  "to other plays by Shakespeare."),
)

RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


@dataclass
class BookinfoConfig:
    """Who this Bookinfo process is and how long it waits for its dependencies."""

    version: str = "v1"
    workload: str = ""
    resolver: str | None = None
    namespace: str | None = None
    details_timeout: float = 3.0
    reviews_timeout: float = 3.0
    reviews_attempts: int = 2
    ratings_timeout: float = 10.0

    @classmethod
    def from_env(cls, app: str, environ: Mapping[str, str] | None = None) -> BookinfoConfig:
        """From the lab's environment; MESH_{DETAILS,REVIEWS,RATINGS}_TIMEOUT override timeouts."""
        env = os.environ if environ is None else environ
        version = env.get("MESH_VERSION") or "v1"
        return cls(
            version=version,
            workload=env.get("MESHLAB_WORKLOAD") or f"{app}-{version}",
            resolver=env.get("MESH_RESOLVER") or None,
            namespace=env.get("MESH_NAMESPACE") or None,
            details_timeout=_env_seconds(env, "MESH_DETAILS_TIMEOUT", 3.0),
            reviews_timeout=_env_seconds(env, "MESH_REVIEWS_TIMEOUT", 3.0),
            ratings_timeout=_env_seconds(env, "MESH_RATINGS_TIMEOUT", 10.0),
        )


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration from the environment ('0.3', '300ms', '3s'); ValueError names the variable."""
    text = env.get(name)
    if not text:
        return default
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def forwarded_headers(req: Request, end_user: str | None = None) -> dict[str, str]:
    """The headers to pass on to downstream calls (plus `end-user` if a user is signed in)."""
    headers = {name: value for name in FORWARDED_HEADERS if (value := req.header(name)) is not None}
    if end_user:
        headers["end-user"] = end_user
    return headers


def product_id(path: str, prefix: str) -> str | None:
    """The id in '<prefix>/<id>', or None if the path is something else."""
    match = re.fullmatch(re.escape(prefix) + r"/([^/]+)", path)
    return match.group(1) if match else None


def bad_product_id() -> Reply:
    """Bookinfo's answer to a non-numeric id."""
    return json_reply({"error": "please provide numeric product id"}, 400)


def health(name: str) -> Reply:
    """The /health answer."""
    return json_reply({"status": f"{name} is healthy"})


def not_found(req: Request) -> Reply:
    """404 for unknown paths, 405 for methods other than GET/HEAD."""
    if req.method not in ("GET", "HEAD"):
        return json_reply({"error": f"method {req.method} not allowed"}, 405)
    return json_reply({"error": f"no such page: {req.path}"}, 404)


# ---------------------------------------------------------------- details


class Details:
    """GET /details/<id>: the book's details."""

    def __init__(self, config: BookinfoConfig) -> None:
        self.config = config

    def __call__(self, req: Request) -> Reply:
        if req.path == "/health":
            return health("Details")
        pid = product_id(req.path, "/details")
        if pid is None or req.method not in ("GET", "HEAD"):
            return not_found(req)
        if not pid.isdigit():
            return bad_product_id()
        return json_reply(book_details(int(pid)))


def book_details(pid: int) -> dict:
    """The details of book `pid` (every id is the same book, as in Bookinfo)."""
    return {
        "id": pid,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


# ---------------------------------------------------------------- ratings


class Ratings:
    """GET /ratings/<id>: the stars each reviewer gave."""

    def __init__(self, config: BookinfoConfig) -> None:
        self.config = config

    def __call__(self, req: Request) -> Reply:
        if req.path == "/health":
            return health("Ratings")
        pid = product_id(req.path, "/ratings")
        if pid is None or req.method not in ("GET", "HEAD"):
            return not_found(req)
        if not pid.isdigit():
            return bad_product_id()
        return json_reply({"id": int(pid), "ratings": dict(RATINGS)})


# ---------------------------------------------------------------- reviews


def star_color(version: str) -> str | None:
    """None for reviews without ratings (v1), else the colour of the stars (v3 red, v2 black)."""
    if version == "v3":
        return "red"
    if version == "v2":
        return "black"
    return None


class Reviews:
    """GET /reviews/<id>: the reviews, with ratings from the ratings service for v2/v3."""

    def __init__(self, config: BookinfoConfig) -> None:
        self.config = config

    def __call__(self, req: Request) -> Reply:
        if req.path == "/health":
            return health("Reviews")
        pid = product_id(req.path, "/reviews")
        if pid is None or req.method not in ("GET", "HEAD"):
            return not_found(req)
        if not pid.isdigit():
            return bad_product_id()
        answer: dict = {
            "id": pid,
            "version": self.config.version,
            "podname": self.config.workload,
            "clustername": "null",
        }
        color = star_color(self.config.version)
        ratings: dict | None = None
        if color is not None:
            ratings = self.fetch_ratings(pid, forwarded_headers(req))
            answer["ratings"] = ratings
        answer["reviews"] = [review(name, text, ratings, color) for name, text in REVIEWS]
        return json_reply(answer)

    def fetch_ratings(self, pid: str, headers: dict[str, str]) -> dict:
        """{reviewer: stars} from the ratings service, or {"error": ...} if it failed."""
        try:
            status, _, body = fetch(
                "ratings", SERVICE_PORT, f"/ratings/{pid}", headers, self.config.ratings_timeout,
                resolver=self.config.resolver, namespace=self.config.namespace,
            )
            if status == 200:
                ratings = json.loads(body).get("ratings")
                if isinstance(ratings, dict):
                    return ratings
        except (FetchError, ValueError, AttributeError):
            pass
        return {"error": RATINGS_UNAVAILABLE}


def review(reviewer: str, text: str, ratings: dict | None, color: str | None) -> dict:
    """One review; with a rating (or the ratings error) when this version shows stars."""
    entry: dict = {"reviewer": reviewer, "text": text}
    if color is None or ratings is None:
        return entry
    if "error" in ratings:
        entry["rating"] = {"error": ratings["error"]}
    elif reviewer in ratings:
        entry["rating"] = {"stars": ratings[reviewer], "color": color}
    return entry


# ---------------------------------------------------------------- productpage


@dataclass
class Dependency:
    """The outcome of one downstream call: the JSON answer or why it failed."""

    data: dict | None
    error: str = ""


class ProductPage:
    """GET / and /productpage: an HTML page built from details and reviews."""

    def __init__(self, config: BookinfoConfig) -> None:
        self.config = config

    def __call__(self, req: Request) -> Reply:
        if req.path == "/health":
            return health("Product page")
        if req.method not in ("GET", "HEAD"):
            return not_found(req)
        user, cookie = signed_in_user(req)
        headers = forwarded_headers(req, user)
        headers.setdefault("x-request-id", str(uuid.uuid4()))
        if req.path in ("/", "/productpage", "/index.html"):
            reply = Reply(body=render_page(user, self.details(0, headers), self.reviews(0, headers)).encode(),
                          content_type="text/html; charset=utf-8")
        elif req.path == "/api/v1/products":
            reply = json_reply([{"id": PRODUCT["id"], "title": PRODUCT["title"],
                                 "descriptionHtml": PRODUCT["descriptionHtml"]}])
        else:
            reply = self.api(req.path, headers)
        if cookie:
            reply.headers.append(("Set-Cookie", cookie))
        return reply

    def api(self, path: str, headers: dict[str, str]) -> Reply:
        """/api/v1/products/<id>[/details|/reviews] as JSON."""
        match = re.fullmatch(r"/api/v1/products/([^/]+)(/details|/reviews)?", path)
        if not match:
            return json_reply({"error": f"no such page: {path}"}, 404)
        if not match.group(1).isdigit():
            return bad_product_id()
        pid, part = int(match.group(1)), match.group(2)
        result: dict = {"id": pid, "title": PRODUCT["title"]}
        if part in (None, "/details"):
            details = self.details(pid, headers)
            result["details"] = details.data if details.data is not None else {"error": DETAILS_UNAVAILABLE}
        if part in (None, "/reviews"):
            reviews = self.reviews(pid, headers)
            result["reviews"] = reviews.data if reviews.data is not None else {"error": REVIEWS_UNAVAILABLE}
        return json_reply(result)

    def details(self, pid: int, headers: dict[str, str]) -> Dependency:
        """The details service's answer (one attempt, details_timeout)."""
        return self.call("details", f"/details/{pid}", headers, self.config.details_timeout, 1)

    def reviews(self, pid: int, headers: dict[str, str]) -> Dependency:
        """The reviews service's answer (reviews_timeout per attempt, retried once as in Bookinfo)."""
        return self.call("reviews", f"/reviews/{pid}", headers, self.config.reviews_timeout,
                         self.config.reviews_attempts)

    def call(self, service: str, path: str, headers: dict[str, str], timeout: float, attempts: int) -> Dependency:
        """GET service:9080/path until a 200 JSON answer or the attempts are used up."""
        error = ""
        for _ in range(max(1, attempts)):
            try:
                status, _, body = fetch(service, SERVICE_PORT, path, headers, timeout,
                                        resolver=self.config.resolver, namespace=self.config.namespace)
            except FetchError as exc:
                error = str(exc)
                continue
            if status != 200:
                error = f"{service} answered HTTP {status}"
                continue
            try:
                data = json.loads(body)
            except ValueError:
                error = f"{service} answered something that is not JSON"
                continue
            if isinstance(data, dict):
                return Dependency(data)
            error = f"{service} answered an unexpected JSON value"
        return Dependency(None, error)


def signed_in_user(req: Request) -> tuple[str | None, str | None]:
    """(user, Set-Cookie value): `?u=NAME` signs in (empty signs out), else cookie `u`, else `end-user`."""
    if "u" in req.query:
        name = req.query["u"].strip()
        if not name:
            return None, "u=; Path=/; Max-Age=0"
        return name, f"u={name}; Path=/"
    return req.cookie("u") or req.header("end-user") or None, None


def render_page(user: str | None, details: Dependency, reviews: Dependency) -> str:
    """The product page: plain HTML, one block per line, readable with curl too."""
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        '<head><meta charset="utf-8"><title>Simple Bookstore App</title></head>',
        "<body>",
        f"<h1>{html.escape(PRODUCT['title'])}</h1>",
    ]
    if user:
        lines.append(f'<p>Signed in as: <span id="user">{html.escape(user)}</span></p>')
    lines.append(f"<p>{PRODUCT['descriptionHtml']}</p>")
    lines.append("<h2>Book Details</h2>")
    lines += render_details(details)
    lines.append("<h2>Book Reviews</h2>")
    lines += render_reviews(reviews)
    lines += ["</body>", "</html>", ""]
    return "\n".join(lines)


def render_error(element_id: str, title: str, message: str, reason: str) -> list[str]:
    """An error section."""
    lines = [f'<div class="error" id="{element_id}">', f"<h3>{title}</h3>", f"<p>{message}</p>"]
    if reason:
        lines.append(f"<p>(reason: {html.escape(reason)})</p>")
    return lines + ["</div>"]


def render_details(details: Dependency) -> list[str]:
    """The Book Details section."""
    if details.data is None:
        return render_error("details-error", "Error fetching product details!", DETAILS_UNAVAILABLE, details.error)
    labels = (("Type", "type"), ("Pages", "pages"), ("Publisher", "publisher"), ("Language", "language"),
              ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13"), ("Author", "author"), ("Year", "year"))
    lines = ['<dl id="details">']
    for label, key in labels:
        if key in details.data:
            lines.append(f"<dt>{label}:</dt> <dd>{html.escape(str(details.data[key]))}</dd>")
    lines.append("</dl>")
    return lines


def render_reviews(reviews: Dependency) -> list[str]:
    """The Book Reviews section, saying which reviews version answered."""
    if reviews.data is None:
        return render_error("reviews-error", "Error fetching product reviews!", REVIEWS_UNAVAILABLE, reviews.error)
    version = html.escape(str(reviews.data.get("version", "unknown")))
    pod = html.escape(str(reviews.data.get("podname", "")))
    lines = [f'<p>Reviews served by: reviews-{version} (version <span id="reviews-version">{version}</span>'
             + (f", pod {pod}" if pod else "") + ")</p>"]
    ratings = reviews.data.get("ratings")
    if isinstance(ratings, dict) and "error" in ratings:
        lines.append(f'<p class="error" id="ratings-error">{html.escape(str(ratings["error"]))}</p>')
    for entry in reviews.data.get("reviews") or []:
        lines += render_review(entry)
    return lines


def render_review(entry: dict) -> list[str]:
    """One review, with its stars when the reviews version shows ratings."""
    lines = [
        "<blockquote>",
        f"<p>{html.escape(str(entry.get('text', '')))}</p>",
        f"<small>{html.escape(str(entry.get('reviewer', '')))}</small>",
    ]
    rating = entry.get("rating")
    if isinstance(rating, dict) and "stars" in rating:
        stars, color = int(rating["stars"]), html.escape(str(rating.get("color", "black")))
        lines.append(f'<p>Rating: <span class="stars" style="color: {color}">{"★" * stars}{"☆" * (5 - stars)}'
                     f"</span> {stars}/5 ({color} stars)</p>")
    elif isinstance(rating, dict) and "error" in rating:
        lines.append(f"<p>Rating: {html.escape(str(rating['error']))}</p>")
    lines.append("</blockquote>")
    return lines


def make_app(name: str, config: BookinfoConfig) -> App:
    """The Bookinfo app called `name`."""
    apps = {"productpage": ProductPage, "details": Details, "reviews": Reviews, "ratings": Ratings}
    return apps[name](config)

