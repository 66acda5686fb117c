use reqwest::Method;

use crate::helpers::{code, spawn_app};
use crate::support::{self, Backend};

crate::on_every_backend!(
    missing_malformed_and_revoked_tokens_get_401,
    another_users_session_is_not_found
);

async fn missing_malformed_and_revoked_tokens_get_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user("ann@example.com").await;
    assert_eq!(app.status(Method::GET, "/v1/billing", &token).await, 200);

    let missing = app
        .request(Method::GET, "/v1/billing", None)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    for bad in [
        "",
        "nope",
        "bst_",
        "bst_0000",
        &token.replace("bst_", "xyz_"),
    ] {
        let (status, body) = app.json(Method::GET, "/v1/billing", bad).await;
        assert_eq!(status, 401, "{bad:?}");
        assert_eq!(code(&body), "unauthorized");
    }
    let basic = app
        .request(Method::GET, "/v1/billing", None)
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    // RFC 9110: the scheme name is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let response = app
            .request(Method::GET, "/v1/billing", None)
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }

    let user = api::service::accounts::find_by_email(
        &app.db.db,
        &api::domain::Email::parse("ann@example.com").unwrap(),
    )
    .await
    .unwrap();
    api::auth::revoke_all(&app.db.db, user.id).await.unwrap();
    let (status, body) = app.json(Method::GET, "/v1/billing", &token).await;
    assert_eq!(status, 401);
    // The same answer whatever the reason: nothing says the token once existed.
    assert_eq!(body["error"]["message"], "missing or invalid bearer token");
}

async fn another_users_session_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let ann = app.user("ann@example.com").await;
    let bob = app.user("bob@example.com").await;
    assert_eq!(
        app.put_session(&ann, "laptop", "Ann's laptop")
            .await
            .status(),
        201
    );

    let (status, body) = app.json(Method::GET, "/v1/sessions/laptop", &bob).await;
    let (missing_status, missing_body) = app
        .json(Method::GET, "/v1/sessions/nothing-here", &bob)
        .await;
    assert_eq!((status, &body), (missing_status, &missing_body));
    assert_eq!(status, 404);
    assert_eq!(
        app.status(Method::DELETE, "/v1/sessions/laptop", &bob)
            .await,
        404
    );
    assert_eq!(
        app.status(Method::POST, "/v1/sessions/laptop/restore", &bob)
            .await,
        404
    );
    // Bob may use the same client id for his own session.
    assert_eq!(
        app.put_session(&bob, "laptop", "Bob's laptop")
            .await
            .status(),
        201
    );
    let (_, ann_view) = app.json(Method::GET, "/v1/sessions/laptop", &ann).await;
    assert_eq!(ann_view["device_name"], "Ann's laptop");
    let (_, list) = app.json(Method::GET, "/v1/sessions", &bob).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}
