//! Seed 4's half of the platform: the catalog, views, ratings, leaderboards,
//! recommendations, sessions and the cache, over a real socket, embedded and with
//! PostgreSQL + MongoDB + Redis; sessions that expire; redeliveries that change nothing;
//! stores that go away mid-run.

use std::time::Duration;

use livros::store::{Page, StoreConfig};
use livros::systems::streaming::SESSION_TTL_OPTION;
use livros::systems::streaming::entities::{EventType, command, parse_event};
use livros::systems::streaming::generator::{Fakes, event_record};
use livros::systems::streaming::routing::{
    CACHE_STATS, HISTORICO, Ranking, espectadores_key, ranking_key,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{CPF, Platform, get, post, start, start_with};
use crate::common::{self, RealStores, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// One request with `?wait=10` added; the status and the reply (or body).
async fn call(method: Method, url: &str) -> (StatusCode, Value) {
    let separator = if url.contains('?') { '&' } else { '?' };
    let response = reqwest::Client::new()
        .request(method, format!("{url}{separator}wait=10"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// A user for the test, created through the gateway.
async fn user(base: &str, id: i64, email: &str, cpf: &str) {
    let body = json!({"user_id": id, "nome": "Bia Lima", "email": email, "cpf": cpf});
    let (status, reply) = post(&format!("{base}/usuarios?wait=10"), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
}

const CPF2: &str = "111.444.777-35";

async fn every_endpoint(p: Platform) {
    let base = p.base.as_str();
    user(base, 7, "bia@example.com", CPF).await;
    user(base, 9, "caio@example.com", CPF2).await;

    // The catalog: filters, one title, what does not exist.
    let (status, found) = get(&format!(
        "{base}/catalogo?genero=CRIME&tipo=filme&q=cidade%20deus"
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["items"][0]["titulo"], "Cidade de Deus", "{found}");
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    let (_, series) = get(&format!("{base}/catalogo?tipo=serie&per_page=100")).await;
    assert_eq!(series["items"].as_array().unwrap().len(), 50);
    assert!(
        series["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["temporadas"].as_i64().unwrap() >= 1 && s["criacao"].is_array())
    );
    let (status, titulo) = get(&format!("{base}/catalogo/23")).await;
    assert_eq!(
        (status, titulo["ano"].as_i64()),
        (StatusCode::OK, Some(2002))
    );
    let (status, related) = get(&format!("{base}/catalogo/2/relacionados?limit=3")).await;
    assert_eq!(status, StatusCode::OK, "{related}");
    assert_eq!(
        related["itens"][0]["titulo"], "The Godfather Part II",
        "{related}"
    );
    assert_eq!(related["itens"].as_array().unwrap().len(), 3);
    assert_eq!(
        get(&format!("{base}/catalogo/99999/relacionados")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{base}/catalogo/99999")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{base}/catalogo/abc")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{base}/catalogo?tipo=livro")).await.0,
        StatusCode::BAD_REQUEST
    );

    // Views: the catalog's title is stored, 90 % or more is finished.
    let view = |user: i64, title: i64, at: u32| {
        format!(
            "{base}/historico-visualizacao?user_id={user}&conteudo_id={title}&posicao={at}&tempo_assistido=30"
        )
    };
    let (status, watched) = call(Method::POST, &view(7, 23, 40)).await;
    assert_eq!(status, StatusCode::CREATED, "{watched}");
    assert_eq!(watched["data"]["titulo"], "Cidade de Deus");
    assert_eq!(watched["data"]["concluido"], false);
    let (_, finished) = call(Method::POST, &view(7, 23, 95)).await;
    assert_eq!(finished["data"]["concluido"], true, "{finished}");
    assert_eq!(
        call(Method::POST, &view(7, 1, 30)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(Method::POST, &view(9, 23, 10)).await.0,
        StatusCode::CREATED
    );
    let (status, missing) = call(Method::POST, &view(7, 99999, 10)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert!(missing["message"].as_str().unwrap().contains("catálogo"));
    assert_eq!(
        call(Method::POST, &view(8, 23, 10)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, bad) = call(Method::POST, &view(7, 23, 150)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    // The seed's call: parameters left out are made up; answered at once.
    let (status, seed) = post(&format!("{base}/historico-visualizacao"), None).await;
    assert_eq!(status, StatusCode::OK, "{seed}");
    assert!(seed["status_url"].as_str().unwrap().starts_with("/status/"));

    // History through the bus, newest first, with its filters.
    let history = |query: &str| format!("{base}/historico-visualizacao/7?{query}");
    let (status, reply) = call(Method::GET, &history("")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let views = reply["data"]["historico"].as_array().unwrap().clone();
    assert_eq!(views.len(), 3, "{reply}");
    assert_eq!(views[0]["conteudo_id"], "1", "newest first: {reply}");
    assert_eq!(
        call(Method::GET, &history("concluido=true")).await.1["data"]["total"],
        1
    );
    assert_eq!(
        call(Method::GET, &history("tipo=serie")).await.1["data"]["total"],
        0
    );
    assert_eq!(
        call(Method::GET, &history("limit=1")).await.1["data"]["total"],
        1
    );
    assert_eq!(
        call(Method::GET, &history("limit=0")).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // "Continue watching": title 23 was finished last time, title 1 was not.
    let (status, next) = get(&format!("{base}/usuarios/7/continuar-assistindo")).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let ids: Vec<&str> = next["itens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["conteudo_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1"], "{next}");

    // Ratings: one per user and title; a new one replaces the old in the average.
    let rate = |user: i64, title: i64, nota: i64| {
        format!("{base}/avaliacoes?user_id={user}&conteudo_id={title}&nota={nota}")
    };
    let (status, rated) = call(Method::POST, &rate(7, 23, 4)).await;
    assert_eq!(status, StatusCode::CREATED, "{rated}");
    assert_eq!(
        (
            rated["data"]["media"].as_f64(),
            rated["data"]["total_avaliacoes"].as_i64()
        ),
        (Some(4.0), Some(1))
    );
    let (_, again) = call(Method::POST, &rate(7, 23, 2)).await;
    assert_eq!(
        (
            again["data"]["media"].as_f64(),
            again["data"]["total_avaliacoes"].as_i64()
        ),
        (Some(2.0), Some(1)),
        "{again}"
    );
    let (_, second) = call(Method::POST, &rate(9, 23, 5)).await;
    assert_eq!(
        (
            second["data"]["media"].as_f64(),
            second["data"]["total_avaliacoes"].as_i64()
        ),
        (Some(3.5), Some(2)),
        "{second}"
    );
    assert_eq!(
        call(Method::POST, &rate(9, 1, 5)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(Method::POST, &rate(7, 23, 6)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Leaderboards: 23 has two viewers, 1 has one; by genre; best rated.
    let (status, board) = get(&format!("{base}/rankings/mais-assistidos?limit=5")).await;
    assert_eq!(status, StatusCode::OK, "{board}");
    assert_eq!(board["itens"][0]["conteudo_id"], "23", "{board}");
    assert_eq!(board["itens"][0]["espectadores"], 2, "{board}");
    assert_eq!(board["itens"][0]["titulo"], "Cidade de Deus");
    let (_, crime) = get(&format!("{base}/rankings/mais-assistidos?genero=crime")).await;
    assert_eq!(crime["genero"], "Crime");
    assert_eq!(crime["itens"].as_array().unwrap().len(), 1, "{crime}");
    let (_, best) = get(&format!("{base}/rankings/mais-bem-avaliados")).await;
    // Scores are averages pulled towards 3 by five imaginary ratings: (15 + 5) / 6 for
    // one 5, (15 + 7) / 7 for a 2 and a 5.
    let board: Vec<(&str, f64, f64)> = best["itens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["conteudo_id"].as_str().unwrap(),
                i["media"].as_f64().unwrap(),
                i["pontuacao"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(board, [("1", 5.0, 3.333), ("23", 3.5, 3.143)], "{best}");
    assert_eq!(
        get(&format!("{base}/rankings/mais-bem-avaliados?genero=nada"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{base}/rankings/piores")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&format!("{base}/rankings/mais-assistidos?limit=0"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // Recommendations: none until generated; then titles of the user's genres not seen.
    let (status, none) = call(Method::GET, &format!("{base}/recomendacoes/7")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{none}");
    let (status, made) = call(
        Method::POST,
        &format!("{base}/recomendacoes/gerar?user_id=7"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let itens = made["data"]["itens"].as_array().unwrap().clone();
    assert_eq!(itens.len(), 10, "{made}");
    assert!(
        itens
            .iter()
            .all(|i| i["conteudo_id"] != "23" && i["conteudo_id"] != "1"),
        "{made}"
    );
    let taste: Vec<&str> = made["data"]["generos_preferidos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert!(
        taste.contains(&"Crime") && taste.contains(&"Drama"),
        "{made}"
    );
    assert!(
        itens.iter().all(|i| i["generos"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| taste.contains(&g.as_str().unwrap()))),
        "{made}"
    );
    let (status, kept) = call(Method::GET, &format!("{base}/recomendacoes/7")).await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    assert_eq!(kept["data"]["itens"], made["data"]["itens"]);

    // Sessions: opened, kept alive, listed, ended (and still ended when asked again).
    let (status, opened) = call(
        Method::POST,
        &format!("{base}/sessoes?user_id=7&dispositivo=tv&localizacao=Recife"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let session = opened["data"]["session_id"].as_str().unwrap().to_string();
    assert_eq!(opened["data"]["dispositivo"], "tv");
    let (status, alive) = call(Method::PUT, &format!("{base}/sessoes/{session}/atividade")).await;
    assert_eq!(status, StatusCode::CREATED, "{alive}");
    let list = |query: &str| format!("{base}/sessoes/usuario/7?{query}");
    let (status, listed) = call(Method::GET, &list("")).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["data"]["sessoes"][0]["session_id"], session.as_str());
    let (status, ended) = call(Method::DELETE, &format!("{base}/sessoes/{session}")).await;
    assert_eq!(status, StatusCode::CREATED, "{ended}");
    assert_eq!(ended["data"]["ativa"], false);
    assert_eq!(
        call(Method::DELETE, &format!("{base}/sessoes/{session}"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(call(Method::GET, &list("")).await.1["data"]["total"], 0);
    assert_eq!(
        call(Method::GET, &list("ativas_apenas=false")).await.1["data"]["total"],
        1
    );
    assert_eq!(
        call(Method::PUT, &format!("{base}/sessoes/{session}/atividade"))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(Method::DELETE, &format!("{base}/sessoes/nope"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            Method::POST,
            "{base}/sessoes?user_id=8".replace("{base}", base).as_str()
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // The cache: a miss fills it, then hits; a title put in it is served from it.
    let (status, miss) = call(Method::GET, &format!("{base}/cache/conteudo/23")).await;
    assert_eq!(status, StatusCode::OK, "{miss}");
    assert_eq!(miss["data"]["origem"], "catalogo");
    let (_, hit) = call(Method::GET, &format!("{base}/cache/conteudo/23")).await;
    assert_eq!(hit["data"]["origem"], "cache", "{hit}");
    assert_eq!(hit["data"]["conteudo"]["titulo"], "Cidade de Deus");
    assert_eq!(
        call(Method::POST, &format!("{base}/cache/conteudo/1"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(Method::GET, &format!("{base}/cache/conteudo/1"))
            .await
            .1["data"]["origem"],
        "cache"
    );
    assert_eq!(
        call(Method::GET, &format!("{base}/cache/conteudo/99999"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let stats = p.stores.key_value.hgetall(CACHE_STATS).await.unwrap();
    assert_eq!(
        (stats["acertos"].as_str(), stats["falhas"].as_str()),
        ("2", "1")
    );
    p.pipeline.stop().await.unwrap();
}

#[tokio::test]
async fn every_endpoint_embedded() {
    every_endpoint(start(StoreConfig::default(), None).await).await;
}

#[tokio::test]
async fn every_endpoint_postgres_mongodb_and_redis() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    every_endpoint(start(real.config.clone(), None).await).await;
    real.cleanup().await;
}

#[tokio::test]
async fn every_endpoint_kafka_and_real_stores() {
    let Some(brokers) = common::service_url("LIVROS_TEST_KAFKA_BROKERS") else {
        return;
    };
    let Some(real) = RealStores::create().await else {
        return;
    };
    every_endpoint(start(real.config.clone(), Some(brokers)).await).await;
    real.cleanup().await;
}

/// A session lives for its time to live after its last activity, then is gone, and so is
/// the user's index of sessions.
async fn sessions_expire(config: StoreConfig) {
    let p = start_with(config, |s| {
        s.options.insert(SESSION_TTL_OPTION.into(), "1.5".into());
    })
    .await;
    let base = p.base.as_str();
    user(base, 7, "bia@example.com", CPF).await;
    let (_, opened) = call(Method::POST, &format!("{base}/sessoes?user_id=7")).await;
    let session = opened["data"]["session_id"].as_str().unwrap().to_string();
    let listed = || async {
        call(Method::GET, &format!("{base}/sessoes/usuario/7"))
            .await
            .1["data"]["total"]
            .as_i64()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (status, _) = call(Method::PUT, &format!("{base}/sessoes/{session}/atividade")).await;
    assert_eq!(status, StatusCode::CREATED, "alive after 1 s of 1.5");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        listed().await,
        1,
        "the heartbeat extended it past its first 1.5 s"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(listed().await, 0, "expired 1.5 s after its last activity");
    let (status, gone) = call(Method::PUT, &format!("{base}/sessoes/{session}/atividade")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert_eq!(
        p.stores
            .key_value
            .count_prefix("sessoes:usuario:")
            .await
            .unwrap(),
        0
    );
    assert_eq!(p.stores.key_value.count_prefix("sessao:").await.unwrap(), 0);
    p.pipeline.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_expire_embedded() {
    sessions_expire(StoreConfig::default()).await;
}

#[tokio::test]
async fn sessions_expire_redis() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    sessions_expire(real.config.clone()).await;
    real.cleanup().await;
}

/// The effects of views and ratings applied twice — a redelivery after a crash before the
/// processor recorded them — count once.
async fn applied_twice_counts_once(config: StoreConfig) {
    let p = start(config, None).await;
    user(&p.base, 7, "bia@example.com", CPF).await;
    let activity = livros::systems::streaming::activity(&p.stores, &p.settings);
    let mut fakes = Fakes::new(Some(1));
    let mut commands = Vec::new();
    for (kind, extra) in [
        (
            EventType::RegistrarVisualizacao,
            json!({"conteudo_id": 23, "posicao": 50}),
        ),
        (
            EventType::RegistrarVisualizacao,
            json!({"conteudo_id": 23, "posicao": 95}),
        ),
        (
            EventType::AvaliarConteudo,
            json!({"conteudo_id": 23, "nota": 4}),
        ),
    ] {
        let mut fields = fakes.fields(kind, Some(7));
        fields.extend(extra.as_object().unwrap().clone());
        let id = uuid::Uuid::new_v4().to_string();
        let record = event_record(&p.settings.topics, kind.name(), &id, &fields);
        commands.push(command(&parse_event(&record.payload).unwrap()).unwrap());
    }
    let commands: Vec<_> = commands.iter().collect();
    let first = activity.apply(&commands).await.unwrap();
    let state = || async {
        let kv = &p.stores.key_value;
        (
            p.stores
                .document
                .find(
                    HISTORICO,
                    &[],
                    Page {
                        skip: 0,
                        limit: 100,
                    },
                )
                .await
                .unwrap()
                .len(),
            kv.scard_many(&[espectadores_key("23")]).await.unwrap(),
            kv.ztop(&ranking_key(Ranking::MaisAssistidos, None), 10)
                .await
                .unwrap(),
            kv.ztop(&ranking_key(Ranking::MaisBemAvaliados, Some("Crime")), 10)
                .await
                .unwrap(),
            kv.hgetall("avaliacao:23").await.unwrap(),
        )
    };
    let before = state().await;
    assert_eq!(before.0, 2);
    assert_eq!(before.1, [1]);
    let again = activity.apply(&commands).await.unwrap();
    assert_eq!(
        state().await,
        before,
        "a second application changes nothing"
    );
    let media = |answers: &[livros::systems::streaming::activity::Answer]| {
        answers[2].as_ref().unwrap().1["media"].as_f64()
    };
    assert_eq!(media(&first), media(&again));
    // A later rating by the same user still moves the average (it replaces the first).
    let mut fields = fakes.fields(EventType::AvaliarConteudo, Some(7));
    fields.extend(
        json!({"conteudo_id": 23, "nota": 2})
            .as_object()
            .unwrap()
            .clone(),
    );
    let record = event_record(&p.settings.topics, "avaliar_conteudo", "later", &fields);
    let later = command(&parse_event(&record.payload).unwrap()).unwrap();
    let answer = activity.apply(&[&later]).await.unwrap();
    assert_eq!(answer[0].as_ref().unwrap().1["media"].as_f64(), Some(2.0));
    assert_eq!(
        answer[0].as_ref().unwrap().1["total_avaliacoes"].as_i64(),
        Some(1)
    );
    p.pipeline.stop().await.unwrap();
}

#[tokio::test]
async fn applied_twice_counts_once_embedded() {
    applied_twice_counts_once(StoreConfig::default()).await;
}

#[tokio::test]
async fn applied_twice_counts_once_mongodb_and_redis() {
    let Some(real) = RealStores::create().await else {
        return;
    };
    applied_twice_counts_once(real.config.clone()).await;
    real.cleanup().await;
}

/// MongoDB and Redis unreachable while views come in: the processor waits for them, and
/// every view lands once they are back.
#[tokio::test]
async fn document_and_key_value_stores_down_mid_run_are_waited_for() {
    let (Some(redis), Some(mongodb)) = (
        common::service_url("LIVROS_TEST_REDIS_URL"),
        common::service_url("LIVROS_TEST_MONGODB_URL"),
    ) else {
        return;
    };
    let port = |url: &str| url::Url::parse(url).unwrap().port().unwrap();
    let (redis_port, mongo_port) = (common::free_port(), common::free_port());
    let mut redis_proxy = common::TcpProxy::start(redis_port, port(&redis)).await;
    let mut mongo_proxy = common::TcpProxy::start(mongo_port, port(&mongodb)).await;
    let database = format!("livros_test_{}", uuid::Uuid::new_v4().simple());
    let config = StoreConfig {
        redis_url: Some(format!("redis://127.0.0.1:{redis_port}")),
        redis_prefix: common::redis_prefix(),
        mongodb_url: Some(format!(
            "mongodb://127.0.0.1:{mongo_port}/?serverSelectionTimeoutMS=1000&directConnection=true"
        )),
        mongodb_database: Some(database.clone()),
        ..Default::default()
    };
    let p = start(config.clone(), None).await;
    user(&p.base, 7, "bia@example.com", CPF).await;
    redis_proxy.cut();
    mongo_proxy.cut();
    let mut fakes = Fakes::new(Some(2));
    let records: Vec<_> = (1..=40)
        .map(|i| {
            let mut fields = fakes.fields(EventType::RegistrarVisualizacao, Some(7));
            fields.insert("conteudo_id".into(), json!(i));
            event_record(
                &p.settings.topics,
                "registrar_visualizacao",
                &uuid::Uuid::new_v4().to_string(),
                &fields,
            )
        })
        .collect();
    p.bus.publish(&records).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis_proxy.restore().await;
    mongo_proxy.restore().await;
    eventually(
        "every view stored once the stores are back",
        WAIT,
        || async { p.stores.document.count(HISTORICO).await.unwrap_or(0) == 40 },
    )
    .await;
    eventually("every title counted", WAIT, || async {
        p.stores
            .key_value
            .ztop(&ranking_key(Ranking::MaisAssistidos, None), 100)
            .await
            .map(|b| b.len())
            .unwrap_or(0)
            == 40
    })
    .await;
    p.pipeline.stop().await.unwrap();
    common::redis_cleanup(&redis, &config.redis_prefix).await;
    let client = mongodb::Client::with_uri_str(&mongodb).await.unwrap();
    client.database(&database).drop().await.unwrap();
}
