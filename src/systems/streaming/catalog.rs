//! The catalog of films and series (`data/catalogo.psv`, shipped in the binary): loaded
//! into the document store's `catalogo` at start, read by the gateway and the processor.
//!
//! A title is a semi-structured document, the shape the seed argues MongoDB for: every
//! title has a type, year, genres and cast; a film has its direction, a series its
//! creators, seasons and episodes. Ids are numbers as text (`"42"`), the line of the title
//! in the file, so they stay put as titles are added at the end.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::routing::CATALOGO;
use crate::store::{DocumentStore, StoreError, StoreResult};

const SHIPPED: &str = include_str!("../../../data/catalogo.psv");

/// A title of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Titulo {
    /// Its id (`"42"`).
    pub id: String,
    /// `filme` or `serie`.
    pub tipo: String,
    /// Its title, as released.
    pub titulo: String,
    /// Year of release (of the first season, for a series).
    pub ano: i64,
    /// Genres, in Portuguese (`Drama`, `Ficção científica`…).
    pub generos: Vec<String>,
    /// A film's direction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direcao: Vec<String>,
    /// A series' creators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub criacao: Vec<String>,
    /// Leading cast.
    pub elenco: Vec<String>,
    /// Runtime in minutes (of an episode, for a series).
    pub duracao_minutos: i64,
    /// A series' seasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporadas: Option<i64>,
    /// A series' episodes, in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episodios: Option<i64>,
}

impl Titulo {
    /// The document stored for it.
    pub fn document(&self) -> Value {
        serde_json::to_value(self).expect("titles serialize")
    }
}

/// The titles shipped with the binary, in file order.
pub fn shipped() -> &'static [Titulo] {
    static TITLES: std::sync::LazyLock<Vec<Titulo>> = std::sync::LazyLock::new(parse);
    &TITLES
}

fn parse() -> Vec<Titulo> {
    let list = |s: &str| -> Vec<String> {
        s.split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    SHIPPED
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split('|').collect();
            let number = |k: usize| f.get(k).and_then(|v| v.trim().parse::<i64>().ok());
            let serie = f[0] == "serie";
            let people = list(f.get(4).copied().unwrap_or_default());
            Titulo {
                id: (i + 1).to_string(),
                tipo: f[0].to_string(),
                titulo: f[1].to_string(),
                ano: number(2).unwrap_or_default(),
                generos: list(f[3]),
                direcao: if serie { vec![] } else { people.clone() },
                criacao: if serie { people } else { vec![] },
                elenco: list(f.get(5).copied().unwrap_or_default()),
                duracao_minutos: number(6).unwrap_or_default(),
                temporadas: number(7),
                episodios: number(8),
            }
        })
        .collect()
}

/// Writes the shipped titles into `catalogo` where the stored one differs or is missing
/// (every start does this: one read, and writes only for what changed); titles added by
/// hand are left alone. Answers how many were written.
pub async fn load(documents: &dyn DocumentStore) -> StoreResult<usize> {
    let page = crate::store::Page {
        skip: 0,
        limit: WHOLE,
    };
    let stored: HashMap<String, Value> = documents
        .find(CATALOGO, &[], page)
        .await?
        .into_iter()
        .filter_map(|d| Some((d["id"].as_str()?.to_string(), d)))
        .collect();
    let docs: Vec<(String, Value)> = shipped()
        .iter()
        .map(|t| (t.id.clone(), t.document()))
        .filter(|(id, doc)| stored.get(id) != Some(doc))
        .collect();
    if docs.is_empty() {
        return Ok(0);
    }
    let results = documents.upsert(CATALOGO, &docs).await?;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(e);
    }
    Ok(docs.len())
}

/// Titles read from `catalogo`, kept in memory: the whole catalog at the first lookup,
/// then any title added since when first asked for (titles do not change under a running
/// platform; one not found is asked for again next time).
#[derive(Clone, Default)]
pub struct Titles {
    known: Arc<RwLock<HashMap<String, Arc<Titulo>>>>,
    by_genre: Arc<RwLock<GenreIndex>>,
    whole: Arc<tokio::sync::OnceCell<()>>,
}

/// Most titles read in the first, whole read of the catalog.
const WHOLE: u64 = 100_000;

/// Title ids by genre (`None`: any genre).
type GenreIndex = HashMap<Option<String>, Arc<Vec<String>>>;

/// Most titles of one genre a recommendation looks at.
const PER_GENRE: u64 = 300;

impl Titles {
    /// The ids of (up to 300) titles of `genre` (any genre when `None`), by id; read once,
    /// then kept, as the titles are.
    pub async fn of_genre(
        &self,
        documents: &dyn DocumentStore,
        genre: Option<&str>,
    ) -> StoreResult<Arc<Vec<String>>> {
        let key = genre.map(str::to_string);
        if let Some(ids) = self.by_genre.read().expect("never poisoned").get(&key) {
            return Ok(ids.clone());
        }
        let filters: Vec<crate::store::Filter> = genre
            .iter()
            .map(|g| crate::store::eq("generos", *g))
            .collect();
        let page = crate::store::Page {
            skip: 0,
            limit: PER_GENRE,
        };
        let ids: Vec<String> = documents
            .find(CATALOGO, &filters, page)
            .await?
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        let ids = Arc::new(ids);
        self.by_genre
            .write()
            .expect("never poisoned")
            .insert(key, ids.clone());
        Ok(ids)
    }

    /// The titles with these ids that exist.
    pub async fn get(
        &self,
        documents: &dyn DocumentStore,
        ids: &[String],
    ) -> StoreResult<HashMap<String, Arc<Titulo>>> {
        // The whole catalog in one read the first time, so a burst of requests on a cold
        // process does not become a title-by-title read each.
        self.whole
            .get_or_try_init(|| async {
                let page = crate::store::Page {
                    skip: 0,
                    limit: WHOLE,
                };
                let all = documents.find(CATALOGO, &[], page).await?;
                let mut known = self.known.write().expect("never poisoned");
                for document in all {
                    if let Ok(t) = serde_json::from_value::<Titulo>(document) {
                        known.insert(t.id.clone(), Arc::new(t));
                    }
                }
                Ok::<(), StoreError>(())
            })
            .await?;
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let known = self.known.read().expect("never poisoned");
            for id in ids {
                match known.get(id) {
                    Some(t) => {
                        found.insert(id.clone(), t.clone());
                    }
                    None if !missing.contains(id) => missing.push(id.clone()),
                    None => {}
                }
            }
        }
        for id in missing {
            let Some(document) = documents.get(CATALOGO, &id).await? else {
                continue;
            };
            let titulo: Titulo =
                serde_json::from_value(document).map_err(|e| StoreError::Fault {
                    store: "catalogo",
                    reason: format!("title {id} is not in the catalog's shape: {e}"),
                })?;
            let titulo = Arc::new(titulo);
            self.known
                .write()
                .expect("never poisoned")
                .insert(id.clone(), titulo.clone());
            found.insert(id, titulo);
        }
        Ok(found)
    }
}

/// Titles related to `title` in the catalog, most related first: sharing its direction or
/// creators counts 3 per person, its cast 2 per person, its genres 1 per genre (ties: the
/// closer year, then the id). Found with the document store's array filters, one
/// query per person and genre.
pub async fn related(
    documents: &dyn DocumentStore,
    title: &Titulo,
    limit: usize,
) -> StoreResult<Vec<(Titulo, i64, Vec<String>)>> {
    let mut links: Vec<(&str, &String, i64)> = Vec::new();
    links.extend(title.direcao.iter().map(|p| ("direcao", p, 3)));
    links.extend(title.criacao.iter().map(|p| ("criacao", p, 3)));
    links.extend(title.elenco.iter().map(|p| ("elenco", p, 2)));
    links.extend(title.generos.iter().map(|g| ("generos", g, 1)));
    let mut found: HashMap<String, (Titulo, i64, Vec<String>)> = HashMap::new();
    let all = crate::store::Page {
        skip: 0,
        limit: 1_000,
    };
    for (field, value, weight) in links {
        let filter = crate::store::eq(field, value.as_str());
        for document in documents.find(CATALOGO, &[filter], all).await? {
            let Ok(other) = serde_json::from_value::<Titulo>(document) else {
                continue;
            };
            if other.id == title.id {
                continue;
            }
            let entry = found
                .entry(other.id.clone())
                .or_insert_with(|| (other, 0, Vec::new()));
            entry.1 += weight;
            entry.2.push(value.clone());
        }
    }
    let mut related: Vec<_> = found.into_values().collect();
    related.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| {
                (a.0.ano - title.ano)
                    .abs()
                    .cmp(&(b.0.ano - title.ano).abs())
            })
            .then_with(|| a.0.id.cmp(&b.0.id))
    });
    related.truncate(limit);
    Ok(related)
}

/// The genre named `name` as the catalog spells it (case ignored), if any title has it.
pub fn genero(name: &str) -> Option<String> {
    let name = name.trim().to_lowercase();
    shipped()
        .iter()
        .flat_map(|t| &t.generos)
        .find(|g| g.to_lowercase() == name)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_is_whole() {
        let titles = shipped();
        assert!(titles.len() >= 200, "{}", titles.len());
        for t in titles {
            assert!(["filme", "serie"].contains(&t.tipo.as_str()), "{t:?}");
            assert!((1900..=2030).contains(&t.ano), "{t:?}");
            assert!(!t.generos.is_empty() && t.elenco.len() == 3, "{t:?}");
            assert!(t.duracao_minutos > 0, "{t:?}");
            let serie = t.tipo == "serie";
            assert_eq!(
                serie,
                t.temporadas.is_some() && t.episodios.is_some(),
                "{t:?}"
            );
            assert_eq!(
                serie,
                t.direcao.is_empty() && !t.criacao.is_empty(),
                "{t:?}"
            );
        }
        assert_eq!(titles[22].titulo, "Cidade de Deus");
        assert_eq!(
            genero("ficção CIENTÍFICA").as_deref(),
            Some("Ficção científica")
        );
        assert_eq!(genero("nope"), None);
    }

    #[tokio::test]
    async fn related_titles_share_people_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::docs_sqlite::SqliteDocumentStore::open(
            &dir.path().join("d.db"),
            &["generos"],
        )
        .await
        .unwrap();
        assert_eq!(load(&store).await.unwrap(), shipped().len());
        assert_eq!(
            load(&store).await.unwrap(),
            0,
            "nothing changed, nothing written"
        );
        let godfather = shipped()
            .iter()
            .find(|t| t.titulo == "The Godfather")
            .unwrap();
        let related = related(&store, godfather, 5).await.unwrap();
        // Part II shares the director and Al Pacino; then other Coppola or Pacino films.
        assert_eq!(related[0].0.titulo, "The Godfather Part II");
        assert!(related[0].2.contains(&"Francis Ford Coppola".to_string()));
        assert!(related.iter().all(|(t, _, _)| t.id != godfather.id));
        assert!(related.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}
