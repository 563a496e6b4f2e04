//! Where S1's books come from: the Google Books API when a key is configured and the API
//! answers, otherwise the offline catalogue shipped in the binary (`data/books.json`:
//! real books, Brazilian and world classics).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::{self, Filter};
use crate::systems::bookstore::entities::Book;

/// The offline catalogue, compiled in so the binary works with no network.
const OFFLINE: &str = include_str!("../../../data/books.json");
/// Google Books API root; `GOOGLE_BOOKS_API_URL` overrides it (tests, proxies).
pub const GOOGLE_BOOKS_URL: &str = "https://www.googleapis.com/books/v1";
/// A slow API must not hold up S1's start for long: the offline catalogue is always there.
const GOOGLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries that give a varied bookstore.
const QUERIES: &[&str] = &[
    "subject:fiction",
    "machado de assis",
    "literatura brasileira",
    "subject:history",
    "subject:science",
];

#[derive(Deserialize)]
struct Entry {
    title: String,
    authors: Vec<String>,
    isbn: Option<String>,
    publisher: Option<String>,
    #[serde(rename = "publishedDate")]
    published_date: Option<String>,
    language: String,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(rename = "pageCount")]
    page_count: Option<u32>,
}

/// A stable id for a catalogue entry: the same book gets the same id in every run, so
/// publishing it again updates one document instead of adding another.
fn catalogue_id(title: &str, authors: &[String]) -> String {
    let text = format!("{title}|{}", authors.join(","));
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("ld-{:012x}", hash & 0xffff_ffff_ffff)
}

/// The offline catalogue as books.
pub fn offline() -> Vec<Book> {
    let entries: Vec<Entry> =
        serde_json::from_str(OFFLINE).expect("data/books.json is valid (checked by tests)");
    entries
        .into_iter()
        .map(|e| {
            let mut extra = serde_json::Map::new();
            if let Some(p) = e.publisher {
                extra.insert("publisher".into(), json!(p));
            }
            extra.insert("language".into(), json!(e.language));
            if !e.categories.is_empty() {
                extra.insert("categories".into(), json!(e.categories));
            }
            if let Some(n) = e.page_count {
                extra.insert("pageCount".into(), json!(n));
            }
            Book {
                id: catalogue_id(&e.title, &e.authors),
                isbn: e.isbn,
                title: e.title,
                authors: e.authors,
                published_date: e.published_date,
                extra,
            }
        })
        .collect()
}

/// Errors of the Google Books client.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The request failed (unreachable, timeout, HTTP error status).
    #[error("Google Books request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The answer was not what the API documents.
    #[error("unexpected Google Books answer: {0}")]
    Shape(String),
}

/// A client of the Google Books API (`GET /volumes?q=`).
pub struct GoogleBooks {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl GoogleBooks {
    /// A client for the API at `base` with API key `key`.
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(GOOGLE_TIMEOUT)
                .build()
                .expect("a default HTTP client builds"),
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        }
    }

    /// Searches volumes; returns them as books (volumes without a title are skipped).
    pub async fn search(&self, query: &str, max_results: u32) -> Result<Vec<Book>, CatalogError> {
        let answer: Value = self
            .http
            .get(format!("{}/volumes", self.base))
            .query(&[
                ("q", query),
                ("key", &self.key),
                ("maxResults", &max_results.min(40).to_string()),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let items = match answer.get("items") {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(CatalogError::Shape("`items` is not an array".into())),
        };
        Ok(items.iter().filter_map(from_volume).collect())
    }
}

/// Maps a Google Books volume to our book shape (ISBN-13 preferred, else ISBN-10).
pub fn from_volume(volume: &Value) -> Option<Book> {
    let id = volume.get("id")?.as_str()?.to_string();
    let info = volume.get("volumeInfo")?;
    let title = info.get("title")?.as_str()?.to_string();
    let identifiers = info.get("industryIdentifiers").and_then(Value::as_array);
    let isbn_of = |kind: &str| {
        identifiers?
            .iter()
            .find(|i| i.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|i| i.get("identifier")?.as_str().map(str::to_string))
    };
    let authors = info
        .get("authors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut extra = serde_json::Map::new();
    for field in [
        "publisher",
        "language",
        "categories",
        "pageCount",
        "description",
    ] {
        if let Some(v) = info.get(field) {
            extra.insert(field.into(), v.clone());
        }
    }
    Some(Book {
        id,
        isbn: isbn_of("ISBN_13").or_else(|| isbn_of("ISBN_10")),
        title,
        authors,
        published_date: info
            .get("publishedDate")
            .and_then(Value::as_str)
            .map(str::to_string),
        extra,
    })
}

/// S1's books, and a sentence saying where they came from.
pub async fn load(api_key: Option<&str>, api_url: &str) -> (Vec<Book>, String) {
    if let Some(key) = api_key.filter(|k| !k.is_empty()) {
        let client = GoogleBooks::new(api_url, key);
        let mut books = Vec::new();
        let mut last_error = None;
        for query in QUERIES {
            match client.search(query, 40).await {
                Ok(found) => books.extend(found),
                Err(e) => {
                    last_error = Some(e.to_string());
                    break;
                }
            }
        }
        if !books.is_empty() {
            books.sort_by(|a, b| a.id.cmp(&b.id));
            books.dedup_by(|a, b| a.id == b.id);
            let n = books.len();
            return (
                books,
                format!("books from the Google Books API ({n} volumes)"),
            );
        }
        let why = last_error.unwrap_or_else(|| "no volumes found".into());
        let books = offline();
        let n = books.len();
        return (
            books,
            format!(
                "books from the offline catalogue ({n} titles): the Google Books API is unavailable ({why})"
            ),
        );
    }
    let books = offline();
    let n = books.len();
    (
        books,
        format!(
            "books from the offline catalogue ({n} titles); set GOOGLE_BOOKS_API_KEY to use the Google Books API"
        ),
    )
}

/// The option (in [`crate::app::Settings::options`]) holding the Google Books API key.
pub const KEY_OPTION: &str = "google_books_api_key";
/// The option holding the Google Books API root (tests point it at a local server).
pub const URL_OPTION: &str = "google_books_url";

/// [`load`] with the key and root the settings' options give (the public API by default).
pub async fn load_for(settings: &crate::app::Settings) -> (Vec<Book>, String) {
    let url = settings
        .options
        .get(URL_OPTION)
        .map_or(GOOGLE_BOOKS_URL, String::as_str);
    load(settings.options.get(KEY_OPTION).map(String::as_str), url).await
}

/// The filters of a book search, as `livros books` and `GET /books` take them: an author
/// (exact, as stored), an ISBN (hyphens and spaces ignored), words of the title.
pub fn book_filters(author: Option<&str>, isbn: Option<&str>, title: Option<&str>) -> Vec<Filter> {
    let mut filters = Vec::new();
    if let Some(a) = author {
        filters.push(store::eq("authors", a.trim()));
    }
    if let Some(i) = isbn {
        let isbn: String = i.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        filters.push(store::eq("isbn", isbn));
    }
    if let Some(t) = title {
        filters.push(Filter::Words {
            field: "title".into(),
            words: t.split_whitespace().map(str::to_string).collect(),
        });
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::bookstore::entities::{isbn13_is_valid, parse_book};

    #[test]
    fn offline_catalogue_is_large_unique_and_valid() {
        let books = offline();
        assert!(books.len() >= 200, "only {} books", books.len());
        let mut ids: Vec<&str> = books.iter().map(|b| b.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), books.len(), "catalogue ids collide");
        for b in &books {
            if let Some(isbn) = &b.isbn {
                assert!(isbn13_is_valid(isbn), "{}: bad ISBN-13 {isbn}", b.title);
            }
            assert!(!b.authors.is_empty(), "{} has no author", b.title);
            // Every catalogue book passes the same validation as S2's input.
            parse_book(&serde_json::to_vec(b).unwrap()).unwrap();
        }
    }

    #[test]
    fn volumes_map_to_books() {
        let volume = json!({
            "id": "zyTCAlFPjgYC",
            "volumeInfo": {
                "title": "The Google story",
                "authors": ["David A. Vise", "Mark Malseed"],
                "publisher": "Random House Digital, Inc.",
                "publishedDate": "2005-11-15",
                "industryIdentifiers": [
                    {"type": "ISBN_10", "identifier": "055380457X"},
                    {"type": "ISBN_13", "identifier": "9780553804577"}
                ],
                "pageCount": 207
            }
        });
        let book = from_volume(&volume).unwrap();
        assert_eq!(book.id, "zyTCAlFPjgYC");
        assert_eq!(book.isbn.as_deref(), Some("9780553804577"));
        assert_eq!(book.authors.len(), 2);
        assert_eq!(book.extra["pageCount"], 207);
        assert!(from_volume(&json!({"id": "x", "volumeInfo": {}})).is_none());
    }

    /// Serves `status` and `body` to every request on a local port, like the API would.
    async fn fake_api(
        status: &'static str,
        body: String,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            while let Ok(Ok((mut socket, _))) =
                tokio::time::timeout(Duration::from_millis(500), listener.accept()).await
            {
                let mut buf = vec![0; 8192];
                let n = socket.read(&mut buf).await.unwrap();
                requests.push(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(reply.as_bytes()).await.unwrap();
            }
            requests
        });
        (url, server)
    }

    #[tokio::test]
    async fn google_books_is_used_when_it_answers() {
        let body = json!({"items": [
            {"id": "v1", "volumeInfo": {"title": "Dom Casmurro", "authors": ["Machado de Assis"]}},
            {"id": "v2", "volumeInfo": {"title": "Iracema", "industryIdentifiers": [{"type": "ISBN_10", "identifier": "8508040008"}]}}
        ]});
        let (url, server) = fake_api("200 OK", body.to_string()).await;
        let (books, source) = load(Some("test-key"), &url).await;
        assert!(source.contains("Google Books API"), "{source}");
        assert_eq!(
            books.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["v1", "v2"]
        );
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("GET /volumes?q="), "{requests:?}");
        assert!(requests[0].contains("key=test-key"), "{requests:?}");
    }

    #[tokio::test]
    async fn offline_catalogue_is_the_fallback() {
        let (url, _server) = fake_api("500 Internal Server Error", "{}".into()).await;
        let (books, source) = load(Some("test-key"), &url).await;
        assert!(
            source.contains("offline catalogue") && source.contains("unavailable"),
            "{source}"
        );
        assert_eq!(books.len(), offline().len());
        let (_, source) = load(None, &url).await;
        assert!(source.contains("set GOOGLE_BOOKS_API_KEY"), "{source}");
    }
}
