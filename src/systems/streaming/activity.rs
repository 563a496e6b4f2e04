//! What users do on the platform, kept where it suits: views and recommendations as
//! documents, sessions, the cache, view counts and leaderboards in the key-value store
//! (the keys are in [`routing`](super::routing)'s table).
//!
//! **One effect per event, without a transaction across stores.** Every write here is
//! idempotent by construction, so applying an event twice — a redelivery after a crash
//! before the processor recorded its reply — changes nothing:
//! - a view is a document whose id is the event's correlation id;
//! - a title's viewers are a set of user ids, and its leaderboard score is that set's
//!   size, raised with `ZADD GT` (counts only grow, so a late writer cannot lower it);
//! - a rating is a hash field per user; its running sum and count move by the
//!   difference from the rating that was there (0 the second time), in one `MULTI`;
//! - sessions and cache entries are hashes set to the same values again.
//!
//! The leaderboard scores are recomputed from those sums after each batch, so they heal
//! themselves if a crash comes between the two writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::catalog::{Titles, Titulo};
use super::entities::{Command, Sessao};
use super::routing::{
    CACHE_STATS, CACHE_TTL, ErrorKind, HISTORICO, RECOMENDACOES, Ranking, avaliacao_key,
    avaliacoes_key, conteudo_key, espectadores_key, ranking_key, sessao_key, sessoes_key,
};
use crate::store::{self, KvWrite, Page, Sort, StoreResult, Stores};
use crate::wire;

/// What an event gets back: a message and data, or why not.
pub type Answer = Result<(String, Value), (ErrorKind, String)>;

/// Ratings a title is pulled towards the mean by (see [`score`]).
const PRIOR_WEIGHT: f64 = 5.0;
/// The mean it is pulled towards: the middle of 1 to 5.
const PRIOR_MEAN: f64 = 3.0;
/// Recommendations kept per user.
const RECOMMENDATIONS: usize = 10;
/// The sessions of a user that are listed, at most.
const MAX_SESSIONS: usize = 1_000;

/// A title's place on the best-rated board: its average pulled towards 3 by five
/// imaginary ratings (a Bayesian average), so one 5-star rating does not top a title
/// a thousand people rated 4.8.
pub fn score(sum: i64, count: i64) -> f64 {
    (PRIOR_WEIGHT * PRIOR_MEAN + sum as f64) / (PRIOR_WEIGHT + count as f64)
}

/// A title's ratings: their sum and how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ratings {
    /// Sum of the ratings.
    pub sum: i64,
    /// How many.
    pub count: i64,
}

impl Ratings {
    /// The plain average, to two decimals (0 with no ratings).
    pub fn average(self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        (self.sum as f64 / self.count as f64 * 100.0).round() / 100.0
    }

    /// The place on the best-rated board ([`score`]).
    pub fn score(self) -> f64 {
        score(self.sum, self.count)
    }
}

/// The ratings of each title, in order, from their `avaliacao:<id>` hashes.
pub async fn ratings(
    kv: &dyn crate::store::KeyValueStore,
    ids: &[String],
) -> StoreResult<Vec<Ratings>> {
    let fields: Vec<(String, String)> = ids
        .iter()
        .flat_map(|c| {
            [
                (avaliacao_key(c), "soma".to_string()),
                (avaliacao_key(c), "total".to_string()),
            ]
        })
        .collect();
    let values = kv.hget_many(&fields).await?;
    let number = |v: &Option<String>| {
        v.as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    Ok(values
        .chunks(2)
        .map(|pair| Ratings {
            sum: number(&pair[0]),
            count: number(&pair[1]),
        })
        .collect())
}

/// The platform's activity over the document and key-value stores.
#[derive(Clone)]
pub struct Activity {
    /// The stores.
    pub stores: Stores,
    /// Titles read from the catalog.
    pub titles: Titles,
    /// How long a session lives without activity.
    pub session_ttl: Duration,
}

fn not_in_catalog(id: &str) -> (ErrorKind, String) {
    (
        ErrorKind::NotFound,
        format!("Conteúdo {id} não está no catálogo"),
    )
}

/// Now in Unix milliseconds, the sessions index's scores.
fn millis(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64
}

/// A session's hash as JSON (`user_id` a number, `ativa` a boolean).
fn session_view(fields: &BTreeMap<String, String>) -> Value {
    let mut view = serde_json::Map::new();
    for (k, v) in fields {
        let value = match k.as_str() {
            "user_id" => v
                .parse::<i64>()
                .map_or_else(|_| v.clone().into(), Value::from),
            "ativa" => (v == "true").into(),
            _ => v.clone().into(),
        };
        view.insert(k.clone(), value);
    }
    Value::Object(view)
}

impl Activity {
    /// The answer to each of `items`, in order, after applying the writes among them.
    /// Writes are applied before reads, so a read sees the batch's writes.
    pub async fn apply(&self, items: &[&Command]) -> StoreResult<Vec<Answer>> {
        let kv = &*self.stores.key_value;
        let documents = &*self.stores.document;
        let content: Vec<String> = items
            .iter()
            .filter_map(|c| match c {
                Command::Assistir(v) => Some(v.conteudo_id.clone()),
                Command::Avaliar { conteudo_id, .. }
                | Command::Cachear { conteudo_id }
                | Command::LerCache { conteudo_id } => Some(conteudo_id.clone()),
                _ => None,
            })
            .collect();
        let titles = self.titles.get(documents, &content).await?;

        // What the writes depend on, read once for the batch and kept current as it goes.
        let rating_fields: Vec<(String, String)> = items
            .iter()
            .filter_map(|c| match c {
                Command::Avaliar {
                    user_id,
                    conteudo_id,
                    ..
                } => Some((avaliacoes_key(conteudo_id), user_id.to_string())),
                _ => None,
            })
            .collect();
        let mut ratings: HashMap<(String, String), Option<i64>> = rating_fields
            .iter()
            .cloned()
            .zip(kv.hget_many(&rating_fields).await?)
            .map(|(k, v)| (k, v.and_then(|v| v.parse().ok())))
            .collect();
        let session_keys: Vec<String> = items
            .iter()
            .filter_map(|c| match c {
                Command::Atividade { session_id } | Command::Encerrar { session_id } => {
                    Some(sessao_key(session_id))
                }
                _ => None,
            })
            .collect();
        let mut sessions: HashMap<String, BTreeMap<String, String>> = session_keys
            .iter()
            .cloned()
            .zip(kv.hgetall_many(&session_keys).await?)
            .collect();

        let now = chrono::Utc::now();
        let stamp = wire::format_timestamp(&now);
        let ttl = chrono::Duration::from_std(self.session_ttl).unwrap_or(chrono::Duration::MAX);
        let mut answers: Vec<Option<Answer>> = vec![None; items.len()];
        let mut views: Vec<(usize, (String, Value))> = Vec::new();
        let mut writes = Vec::new();
        let mut viewed = BTreeSet::new();
        let mut rated = BTreeSet::new();
        for (i, command) in items.iter().enumerate() {
            let answer = match command {
                Command::Assistir(v) => match titles.get(&v.conteudo_id) {
                    None => Err(not_in_catalog(&v.conteudo_id)),
                    Some(t) => {
                        let mut v = v.clone();
                        v.titulo.clone_from(&t.titulo);
                        v.tipo.clone_from(&t.tipo);
                        let doc = serde_json::to_value(&v).expect("views serialize");
                        views.push((i, (v.id.clone(), doc.clone())));
                        writes.push(KvWrite::SAdd {
                            key: espectadores_key(&v.conteudo_id),
                            members: vec![v.user_id.to_string()],
                        });
                        viewed.insert(v.conteudo_id.clone());
                        Ok((format!("Visualização de {} registrada", t.titulo), doc))
                    }
                },
                Command::Avaliar {
                    user_id,
                    conteudo_id,
                    nota,
                } => match titles.get(conteudo_id) {
                    None => Err(not_in_catalog(conteudo_id)),
                    Some(_) => {
                        let field = (avaliacoes_key(conteudo_id), user_id.to_string());
                        let old = ratings.get(&field).copied().flatten();
                        writes.push(KvWrite::HSet {
                            key: field.0.clone(),
                            fields: vec![(field.1.clone(), nota.to_string())],
                        });
                        writes.push(KvWrite::HIncrBy {
                            key: avaliacao_key(conteudo_id),
                            field: "soma".into(),
                            by: nota - old.unwrap_or(0),
                        });
                        writes.push(KvWrite::HIncrBy {
                            key: avaliacao_key(conteudo_id),
                            field: "total".into(),
                            by: i64::from(old.is_none()),
                        });
                        ratings.insert(field, Some(*nota));
                        rated.insert(conteudo_id.clone());
                        // Answered once the title's new average is known.
                        continue;
                    }
                },
                Command::AbrirSessao(s) => {
                    let fields = self.open_session(s, &stamp, &mut writes, now + ttl);
                    let view = session_view(&fields);
                    sessions.insert(sessao_key(&s.session_id), fields);
                    Ok((format!("Sessão {} criada", s.session_id), view))
                }
                Command::Atividade { session_id } => {
                    let key = sessao_key(session_id);
                    match sessions.get_mut(&key) {
                        Some(fields) if fields.get("ativa").is_some_and(|a| a == "true") => {
                            fields.insert("ultima_atividade".into(), stamp.clone());
                            let user = fields.get("user_id").cloned().unwrap_or_default();
                            writes.extend(self.keep_alive(&key, &user, session_id, now + ttl));
                            writes.push(KvWrite::HSet {
                                key,
                                fields: vec![("ultima_atividade".into(), stamp.clone())],
                            });
                            Ok((
                                format!("Atividade da sessão {session_id} registrada"),
                                session_view(fields),
                            ))
                        }
                        Some(fields) if !fields.is_empty() => Err((
                            ErrorKind::Conflict,
                            format!("A sessão {session_id} foi encerrada"),
                        )),
                        _ => Err((
                            ErrorKind::NotFound,
                            format!("Sessão {session_id} não encontrada (ou expirada)"),
                        )),
                    }
                }
                Command::Encerrar { session_id } => {
                    let key = sessao_key(session_id);
                    match sessions.get_mut(&key) {
                        Some(fields) if !fields.is_empty() => {
                            // Kept, marked ended, until it would have expired: a
                            // redelivered logout finds it ended and answers the same.
                            if fields.get("ativa").is_some_and(|a| a == "true") {
                                fields.insert("ativa".into(), "false".into());
                                fields.insert("encerrada_em".into(), stamp.clone());
                                let user = fields.get("user_id").cloned().unwrap_or_default();
                                writes.push(KvWrite::HSet {
                                    key: key.clone(),
                                    fields: vec![
                                        ("ativa".into(), "false".into()),
                                        ("encerrada_em".into(), stamp.clone()),
                                    ],
                                });
                                writes.extend(self.keep_alive(&key, &user, session_id, now + ttl));
                            }
                            Ok((
                                format!("Sessão {session_id} encerrada"),
                                session_view(fields),
                            ))
                        }
                        _ => Err((
                            ErrorKind::NotFound,
                            format!("Sessão {session_id} não encontrada (ou expirada)"),
                        )),
                    }
                }
                Command::Cachear { conteudo_id } => match titles.get(conteudo_id) {
                    None => Err(not_in_catalog(conteudo_id)),
                    Some(t) => {
                        writes.extend(cache_writes(t));
                        Ok((
                            format!("Conteúdo {conteudo_id} em cache por 1 hora"),
                            json!({"conteudo_id": conteudo_id, "ttl_segundos": CACHE_TTL.as_secs(), "conteudo": t.document()}),
                        ))
                    }
                },
                // Reads and recommendations come after the writes.
                _ => continue,
            };
            answers[i] = Some(answer);
        }

        // The views, each alone: one the store refuses is answered as such.
        if !views.is_empty() {
            let docs: Vec<(String, Value)> = views.iter().map(|(_, d)| d.clone()).collect();
            let results = documents.upsert(HISTORICO, &docs).await?;
            for ((i, _), result) in views.iter().zip(results) {
                match result {
                    Ok(()) => {}
                    Err(e) if e.is_rejection() => {
                        answers[*i] = Some(Err((ErrorKind::Invalid, e.to_string())));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        kv.write(&writes).await?;
        let averages = self.update_rankings(&titles, &viewed, &rated).await?;

        for (i, command) in items.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            let answer = match command {
                Command::Avaliar {
                    user_id,
                    conteudo_id,
                    nota,
                } => {
                    let (media, total) = averages.get(conteudo_id).copied().unwrap_or_default();
                    Ok((
                        format!("Avaliação {nota} do usuário {user_id} registrada"),
                        json!({"user_id": user_id, "conteudo_id": conteudo_id, "nota": nota,
                               "media": media, "total_avaliacoes": total}),
                    ))
                }
                Command::Historico {
                    user_id,
                    tipo,
                    concluido,
                    limit,
                } => {
                    let mut filters = vec![store::eq("user_id", *user_id)];
                    if let Some(tipo) = tipo {
                        filters.push(store::eq("tipo", tipo.as_str()));
                    }
                    if let Some(concluido) = concluido {
                        filters.push(store::eq("concluido", *concluido));
                    }
                    let historico = self.history(&filters, *limit).await?;
                    Ok((
                        format!("Histórico do usuário {user_id}"),
                        json!({"user_id": user_id, "total": historico.len(), "historico": historico}),
                    ))
                }
                Command::Recomendar { user_id } => {
                    let recomendacoes = self.recommend(*user_id, &stamp).await?;
                    Ok((
                        format!("Recomendações do usuário {user_id} geradas"),
                        recomendacoes,
                    ))
                }
                Command::Recomendacoes { user_id } => {
                    match documents.get(RECOMENDACOES, &user_id.to_string()).await? {
                        Some(found) => Ok((format!("Recomendações do usuário {user_id}"), found)),
                        None => Err((
                            ErrorKind::NotFound,
                            format!(
                                "Nenhuma recomendação gerada para o usuário {user_id}: peça com POST /recomendacoes/gerar?user_id={user_id}"
                            ),
                        )),
                    }
                }
                Command::Sessoes {
                    user_id,
                    ativas_apenas,
                } => {
                    let sessoes = self.sessions(*user_id, *ativas_apenas).await?;
                    Ok((
                        format!("Sessões do usuário {user_id}"),
                        json!({"user_id": user_id, "total": sessoes.len(), "sessoes": sessoes}),
                    ))
                }
                Command::LerCache { conteudo_id } => {
                    self.read_through(conteudo_id, &titles).await?
                }
                other => unreachable!("{other:?} is answered above"),
            };
            answers[i] = Some(answer);
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every item is answered"))
            .collect())
    }

    /// The writes that open `s`, and its fields.
    fn open_session(
        &self,
        s: &Sessao,
        stamp: &str,
        writes: &mut Vec<KvWrite>,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> BTreeMap<String, String> {
        let fields: BTreeMap<String, String> = [
            ("session_id", s.session_id.clone()),
            ("user_id", s.user_id.to_string()),
            ("dispositivo", s.dispositivo.clone()),
            ("localizacao", s.localizacao.clone()),
            ("inicio", s.inicio.clone()),
            ("ultima_atividade", stamp.to_string()),
            ("ativa", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let key = sessao_key(&s.session_id);
        writes.push(KvWrite::HSet {
            key: key.clone(),
            fields: fields.clone().into_iter().collect(),
        });
        writes.extend(self.keep_alive(&key, &s.user_id.to_string(), &s.session_id, expires));
        fields
    }

    /// The writes that keep a session until `expires`: its hash's expiry, its place in
    /// the user's index (scored by when it expires), the index's own expiry, and the
    /// index pruned of the sessions that have expired.
    fn keep_alive(
        &self,
        key: &str,
        user: &str,
        session_id: &str,
        expires: chrono::DateTime<chrono::Utc>,
    ) -> Vec<KvWrite> {
        let index = sessoes_key(user);
        vec![
            KvWrite::Expire {
                key: key.to_string(),
                ttl: self.session_ttl,
            },
            KvWrite::ZRemUpTo {
                key: index.clone(),
                max: millis(chrono::Utc::now()),
            },
            KvWrite::ZAdd {
                key: index.clone(),
                members: vec![(session_id.to_string(), millis(expires))],
            },
            KvWrite::Expire {
                key: index,
                ttl: self.session_ttl,
            },
        ]
    }

    /// Raises the viewed titles' leaderboard scores to their viewer counts and sets the
    /// rated titles' scores; answers each rated title's `(average, ratings)`.
    async fn update_rankings(
        &self,
        titles: &HashMap<String, Arc<Titulo>>,
        viewed: &BTreeSet<String>,
        rated: &BTreeSet<String>,
    ) -> StoreResult<HashMap<String, (f64, i64)>> {
        let kv = &*self.stores.key_value;
        let mut writes = Vec::new();
        let viewed: Vec<&String> = viewed.iter().collect();
        let keys: Vec<String> = viewed.iter().map(|c| espectadores_key(c)).collect();
        for (id, viewers) in viewed.iter().zip(kv.scard_many(&keys).await?) {
            let genres = titles
                .get(*id)
                .map(|t| t.generos.clone())
                .unwrap_or_default();
            for genre in std::iter::once(None).chain(genres.iter().map(Some)) {
                writes.push(KvWrite::ZRaise {
                    key: ranking_key(Ranking::MaisAssistidos, genre.map(String::as_str)),
                    member: (*id).clone(),
                    score: viewers as f64,
                });
            }
        }
        let rated: Vec<String> = rated.iter().cloned().collect();
        let mut averages = HashMap::new();
        for (id, r) in rated.iter().zip(ratings(kv, &rated).await?) {
            averages.insert(id.clone(), (r.average(), r.count));
            let genres = titles
                .get(id)
                .map(|t| t.generos.clone())
                .unwrap_or_default();
            for genre in std::iter::once(None).chain(genres.iter().map(Some)) {
                writes.push(KvWrite::ZAdd {
                    key: ranking_key(Ranking::MaisBemAvaliados, genre.map(String::as_str)),
                    members: vec![(id.clone(), r.score())],
                });
            }
        }
        kv.write(&writes).await?;
        Ok(averages)
    }

    /// Views matching `filters`, newest first.
    pub async fn history(&self, filters: &[store::Filter], limit: u64) -> StoreResult<Vec<Value>> {
        let newest = Sort {
            field: "data".into(),
            descending: true,
        };
        self.stores
            .document
            .find_sorted(HISTORICO, filters, Some(&newest), Page { skip: 0, limit })
            .await
    }

    /// "Continue watching": the titles a user started and did not finish, the most
    /// recently watched first, each once, as its latest view.
    pub async fn continue_watching(&self, user_id: i64, limit: usize) -> StoreResult<Vec<Value>> {
        let recent = self.history(&[store::eq("user_id", user_id)], 500).await?;
        let mut seen = HashSet::new();
        Ok(recent
            .into_iter()
            .filter(|v| seen.insert(v["conteudo_id"].as_str().unwrap_or_default().to_string()))
            .filter(|v| v["concluido"] != true)
            .take(limit)
            .collect())
    }

    /// A user's sessions, newest first; only those not ended when `active_only`.
    /// Expired ones are gone from their hashes and skipped, and no longer counted in the
    /// index once a write prunes it.
    pub async fn sessions(&self, user_id: i64, active_only: bool) -> StoreResult<Vec<Value>> {
        let kv = &*self.stores.key_value;
        let now = millis(chrono::Utc::now());
        let ids: Vec<String> = kv
            .ztop(&sessoes_key(&user_id.to_string()), MAX_SESSIONS)
            .await?
            .into_iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(id, _)| sessao_key(&id))
            .collect();
        let mut found: Vec<BTreeMap<String, String>> = kv
            .hgetall_many(&ids)
            .await?
            .into_iter()
            .filter(|s| !s.is_empty())
            .filter(|s| !active_only || s.get("ativa").is_some_and(|a| a == "true"))
            .collect();
        found.sort_by(|a, b| b.get("inicio").cmp(&a.get("inicio")));
        Ok(found.iter().map(session_view).collect())
    }

    /// A title through the cache: from `conteudo:<id>` when there, else from the catalog,
    /// filling the cache. Hits and misses are counted in `cache:estatisticas`.
    async fn read_through(
        &self,
        conteudo_id: &str,
        titles: &HashMap<String, Arc<Titulo>>,
    ) -> StoreResult<Answer> {
        let kv = &*self.stores.key_value;
        let cached = kv.hgetall(&conteudo_key(conteudo_id)).await?;
        if let Some(document) = cached
            .get("documento")
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
        {
            kv.write(&[KvWrite::HIncrBy {
                key: CACHE_STATS.into(),
                field: "acertos".into(),
                by: 1,
            }])
            .await?;
            return Ok(Ok((
                format!("Conteúdo {conteudo_id} (do cache)"),
                json!({"conteudo_id": conteudo_id, "origem": "cache", "conteudo": document}),
            )));
        }
        let Some(title) = titles.get(conteudo_id) else {
            return Ok(Err(not_in_catalog(conteudo_id)));
        };
        let mut writes = cache_writes(title);
        writes.push(KvWrite::HIncrBy {
            key: CACHE_STATS.into(),
            field: "falhas".into(),
            by: 1,
        });
        kv.write(&writes).await?;
        Ok(Ok((
            format!("Conteúdo {conteudo_id} (do catálogo; agora em cache)"),
            json!({"conteudo_id": conteudo_id, "origem": "catalogo", "conteudo": title.document()}),
        )))
    }

    /// Works out a user's recommendations and keeps them (one document per user).
    ///
    /// The genres the user watches most (a finished title counts twice) pick the
    /// candidates: titles of those genres the user has not watched, from the catalog and
    /// the genres' most-watched boards. Each is scored by how much of the user's taste it
    /// matches (the weights of its genres among theirs) plus its popularity (viewers, on
    /// a log scale) and its rating; the ten best are kept. A user with no history gets
    /// the platform's most watched and best rated titles.
    pub async fn recommend(&self, user_id: i64, stamp: &str) -> StoreResult<Value> {
        let documents = &*self.stores.document;
        let kv = &*self.stores.key_value;
        let history = self.history(&[store::eq("user_id", user_id)], 500).await?;
        let watched: HashSet<String> = history
            .iter()
            .filter_map(|v| v["conteudo_id"].as_str().map(str::to_string))
            .collect();
        let watched_ids: Vec<String> = watched.iter().cloned().collect();
        let watched_titles = self.titles.get(documents, &watched_ids).await?;
        let mut weights: HashMap<String, f64> = HashMap::new();
        for view in &history {
            let id = view["conteudo_id"].as_str().unwrap_or_default();
            let weight = if view["concluido"] == true { 2.0 } else { 1.0 };
            for genre in watched_titles
                .get(id)
                .map(|t| t.generos.as_slice())
                .unwrap_or(&[])
            {
                *weights.entry(genre.clone()).or_default() += weight;
            }
        }
        let mut taste: Vec<(String, f64)> = weights.into_iter().collect();
        taste.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        taste.truncate(3);

        // Candidates and their popularity.
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        let mut viewers: HashMap<String, f64> = HashMap::new();
        let boards: Vec<Option<&str>> = if taste.is_empty() {
            vec![None]
        } else {
            taste.iter().map(|(g, _)| Some(g.as_str())).collect()
        };
        for genre in &boards {
            for (id, n) in kv
                .ztop(&ranking_key(Ranking::MaisAssistidos, *genre), 50)
                .await?
            {
                viewers.insert(id.clone(), n);
                candidates.insert(id);
            }
            candidates.extend(
                self.titles
                    .of_genre(documents, *genre)
                    .await?
                    .iter()
                    .cloned(),
            );
        }
        if taste.is_empty() {
            for (id, _) in kv
                .ztop(&ranking_key(Ranking::MaisBemAvaliados, None), 50)
                .await?
            {
                candidates.insert(id);
            }
        }
        candidates.retain(|id| !watched.contains(id));
        let candidates: Vec<String> = candidates.into_iter().collect();
        let titles = self.titles.get(documents, &candidates).await?;
        let rated = ratings(kv, &candidates).await?;
        let top_weight = taste.first().map_or(1.0, |(_, w)| *w);
        let top_viewers = viewers.values().copied().fold(1.0_f64, f64::max);
        let mut scored: Vec<(f64, &Titulo, Vec<&str>)> = Vec::new();
        for (id, r) in candidates.iter().zip(rated) {
            let Some(title) = titles.get(id) else {
                continue;
            };
            let rating = r.score();
            let matched: Vec<&str> = taste
                .iter()
                .filter(|(g, _)| title.generos.contains(g))
                .map(|(g, _)| g.as_str())
                .collect();
            let affinity: f64 = taste
                .iter()
                .filter(|(g, _)| title.generos.contains(g))
                .map(|(_, w)| w / top_weight)
                .sum();
            let popularity = (1.0 + viewers.get(id).copied().unwrap_or(0.0)).ln()
                / (1.0 + top_viewers).ln().max(f64::MIN_POSITIVE);
            let value = affinity + 0.5 * popularity + 0.1 * (rating - PRIOR_MEAN);
            scored.push((value, title, matched));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let itens: Vec<Value> = scored
            .iter()
            .take(RECOMMENDATIONS)
            .map(|(value, t, matched)| {
                let motivo = if matched.is_empty() {
                    "Em alta na plataforma".to_string()
                } else {
                    format!("Porque você assiste {}", matched.join(" e "))
                };
                json!({"conteudo_id": t.id, "titulo": t.titulo, "tipo": t.tipo, "ano": t.ano,
                       "generos": t.generos, "pontuacao": (value * 1000.0).round() / 1000.0,
                       "motivo": motivo})
            })
            .collect();
        let document = json!({
            "id": user_id.to_string(),
            "user_id": user_id,
            "gerado_em": stamp,
            "generos_preferidos": taste.iter().map(|(g, _)| g).collect::<Vec<_>>(),
            "itens": itens,
        });
        let results = documents
            .upsert(RECOMENDACOES, &[(user_id.to_string(), document.clone())])
            .await?;
        results.into_iter().collect::<StoreResult<Vec<()>>>()?;
        Ok(document)
    }
}

/// The writes that put a title in the cache: its main fields for whoever reads the hash,
/// and the whole document, for one hour.
fn cache_writes(title: &Titulo) -> Vec<KvWrite> {
    let key = conteudo_key(&title.id);
    vec![
        KvWrite::HSet {
            key: key.clone(),
            fields: vec![
                ("id".into(), title.id.clone()),
                ("titulo".into(), title.titulo.clone()),
                ("tipo".into(), title.tipo.clone()),
                ("ano".into(), title.ano.to_string()),
                ("generos".into(), title.generos.join(", ")),
                ("documento".into(), title.document().to_string()),
            ],
        },
        KvWrite::Expire {
            key,
            ttl: CACHE_TTL,
        },
    ]
}
