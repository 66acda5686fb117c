//! What grants Pro: `PRO_PRICE_IDS`, an optional allow-list of Stripe prices and products.
//!
//! Unset or blank, any subscription grants Pro (by the tier rule of its status and period).
//! Set, only a subscription with an item whose price is listed (`price_…`, matched against
//! `items.data[].price.id`) or whose price's product is listed (`prod_…`, matched against
//! `items.data[].price.product`, an id or, expanded, an object with an `id`). Products, so a
//! new price of the same plan (a price change, another currency) needs no deploy; prices, to
//! sell a cheaper non-Pro price of the same product.
//!
//! The `user_tiers` view cannot read the environment, so the answer is stored with each
//! snapshot (`price_grants_pro`, m012) when the webhook or `stripe-sync` writes it.

use std::fmt;

use serde_json::Value;

/// The allow-list, as `PRO_PRICE_IDS` gives it. Empty: any subscription grants Pro.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProPrices {
    prices: Vec<String>,
    products: Vec<String>,
}

/// Why a list was refused. It names the entry by its position, not its value (the same
/// style as `STRIPE_WEBHOOK_SECRETS`, so a log of the refusal shows no configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricesError {
    #[error(
        "PRO_PRICE_IDS (--pro-price-ids) has an empty entry (number {position} of {count}): \
         remove the stray comma, or leave the variable empty so that any subscription \
         grants Pro"
    )]
    Empty { position: usize, count: usize },
    #[error(
        "PRO_PRICE_IDS (--pro-price-ids) entry number {position} of {count} is not a Stripe \
         price or product id: expected price_ or prod_ followed by letters and digits, as the \
         Dashboard shows them (an account whose products have custom ids must leave the list \
         unset)"
    )]
    NotAnId { position: usize, count: usize },
}

/// Whether `rest` (what follows `price_` or `prod_`) has the shape of Stripe's generated ids.
fn id_body(rest: &str) -> bool {
    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric())
}

impl ProPrices {
    /// A blank list sets nothing (any subscription grants Pro); an empty entry in a non-blank
    /// list, or an entry shaped like neither a price nor a product id, is refused.
    pub fn parse(list: &str) -> Result<Self, PricesError> {
        let mut parsed = Self::default();
        if list.trim().is_empty() {
            return Ok(parsed);
        }
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        let count = entries.len();
        for (index, entry) in entries.into_iter().enumerate() {
            let position = index + 1;
            if entry.is_empty() {
                return Err(PricesError::Empty { position, count });
            }
            if entry.strip_prefix("price_").is_some_and(id_body) {
                parsed.prices.push(entry.to_owned());
            } else if entry.strip_prefix("prod_").is_some_and(id_body) {
                parsed.products.push(entry.to_owned());
            } else {
                return Err(PricesError::NotAnId { position, count });
            }
        }
        Ok(parsed)
    }

    /// No list: any subscription grants Pro.
    pub fn is_unset(&self) -> bool {
        self.prices.is_empty() && self.products.is_empty()
    }

    /// Whether a Stripe subscription object (an event's `data.object`, or one of
    /// `GET /v1/subscriptions`) grants Pro by its items: always with no list, else when any
    /// item's price or its product is listed.
    pub fn grants_pro(&self, subscription: &Value) -> bool {
        if self.is_unset() {
            return true;
        }
        subscription
            .pointer("/items/data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| item.get("price"))
            .any(|price| {
                id_of(Some(price)).is_some_and(|p| self.prices.iter().any(|l| l == p))
                    || id_of(price.get("product"))
                        .is_some_and(|p| self.products.iter().any(|l| l == p))
            })
    }
}

/// An id as Stripe sends it: a string, or an expanded object carrying its `id`.
fn id_of(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(id) => Some(id.as_str()),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

impl fmt::Debug for ProPrices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ProPrices({} price(s), {} product(s))",
            self.prices.len(),
            self.products.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription(items: Value) -> Value {
        json!({"id": "sub_1", "object": "subscription", "items": {"object": "list", "data": items}})
    }

    #[test]
    fn parses_prices_and_products_and_refuses_anything_else_by_position() {
        let list = ProPrices::parse(" price_1Pro , prod_Pro2\t").expect("valid");
        assert_eq!(list.prices, vec!["price_1Pro"]);
        assert_eq!(list.products, vec!["prod_Pro2"]);
        assert!(ProPrices::parse("").expect("blank").is_unset());
        assert!(ProPrices::parse("  ").expect("blank").is_unset());
        for (text, expected) in [
            (
                "price_a,",
                PricesError::Empty {
                    position: 2,
                    count: 2,
                },
            ),
            (
                "price_a,,prod_b",
                PricesError::Empty {
                    position: 2,
                    count: 3,
                },
            ),
            (
                "price_...",
                PricesError::NotAnId {
                    position: 1,
                    count: 1,
                },
            ),
            (
                "price_",
                PricesError::NotAnId {
                    position: 1,
                    count: 1,
                },
            ),
            (
                "prod_a,plan_gold",
                PricesError::NotAnId {
                    position: 2,
                    count: 2,
                },
            ),
            (
                "prod_a,price_b,sku_c",
                PricesError::NotAnId {
                    position: 3,
                    count: 3,
                },
            ),
            (
                "pro_monthly",
                PricesError::NotAnId {
                    position: 1,
                    count: 1,
                },
            ),
        ] {
            let err = ProPrices::parse(text).err();
            assert_eq!(err, Some(expected), "{text:?}");
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(message.lines().count(), 1, "{message}");
            for value in ["...", "plan_gold", "sku_c", "pro_monthly"] {
                assert!(!message.contains(value), "{message}");
            }
        }
    }

    #[test]
    fn any_item_on_the_list_grants_pro() {
        let list = ProPrices::parse("price_pro,prod_team").expect("valid");
        let price =
            |id: &str, product: Value| json!({"id": "si", "price": {"id": id, "product": product}});
        let cases = [
            (vec![price("price_pro", json!("prod_x"))], true),
            (vec![price("price_basic", json!("prod_x"))], false),
            (vec![price("price_basic", json!("prod_team"))], true),
            // Expanded product.
            (
                vec![price(
                    "price_basic",
                    json!({"id": "prod_team", "object": "product"}),
                )],
                true,
            ),
            (
                vec![price(
                    "price_basic",
                    json!({"id": "prod_x", "object": "product"}),
                )],
                false,
            ),
            // Any item is enough.
            (
                vec![
                    price("price_basic", json!("prod_x")),
                    price("price_pro", json!("prod_x")),
                ],
                true,
            ),
            (vec![], false),
            (vec![json!({"id": "si", "price": null})], false),
        ];
        for (items, expected) in cases {
            let object = subscription(Value::Array(items));
            assert_eq!(list.grants_pro(&object), expected, "{object}");
            // With no list, anything does.
            assert!(ProPrices::default().grants_pro(&object));
        }
        // A product id is not a price id, nor the other way round.
        let swapped = ProPrices::parse("prod_pro").expect("valid");
        assert!(!swapped.grants_pro(&subscription(json!([price("prod_pro", json!("prod_x"))]))));
    }
}
