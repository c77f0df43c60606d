//! The checks after each step: every order read back, and the merchant and
//! shipping views, compared with the model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

use super::driver::{Case, send, send_visible, set_of, string_set};
use super::reference::ModelOrder;
use super::steps::Class;
use super::{OWN_MERCHANT, VIEWED_PROVIDER};
use crate::common::app::{CHECKOUT, LOGISTICS_SF, MERCHANT_M1};

impl Case<'_> {
    /// Reads one order back and compares it with the model.
    pub(super) async fn check_order(&self, what: &str, i: usize) -> Result<(), TestCaseError> {
        let o = &self.model.orders[i];
        let a = send(
            self.app.get(&format!("/v1/orders/{}", o.id), CHECKOUT),
            self.stats,
        )
        .await?;
        let b = &a.body;
        let ctx = format!("{what}: order {i} {}", o.id);
        prop_assert_eq!(a.status, 200, "{}: GET {}", ctx, b);
        prop_assert_eq!(
            b["version"].as_u64(),
            Some(o.version),
            "{}: version; {}",
            ctx,
            b
        );
        prop_assert_eq!(
            a.etag.clone(),
            Some(format!("\"{}\"", o.version)),
            "{}: ETag",
            ctx
        );
        prop_assert_eq!(
            b["status"].as_str(),
            Some(o.status()),
            "{}: status; {}",
            ctx,
            b
        );
        prop_assert_eq!(
            b["cancel_reason"].as_str(),
            o.cancel_reason,
            "{}: cancel_reason; {}",
            ctx,
            b
        );
        prop_assert_eq!(
            string_set(&b["erased_fields"]),
            set_of(&o.erased),
            "{}: erased_fields; {}",
            ctx,
            b
        );
        let shares: Option<BTreeMap<(String, String), BTreeSet<String>>> =
            b["shares"].as_array().map(|a| {
                a.iter()
                    .map(|s| {
                        let party = (
                            s["party"]["kind"].as_str().unwrap_or_default().to_owned(),
                            s["party"]["id"].as_str().unwrap_or_default().to_owned(),
                        );
                        (party, string_set(&s["fields"]).unwrap_or_default())
                    })
                    .collect()
            });
        let want: BTreeMap<(String, String), BTreeSet<String>> = o
            .shares
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, c)| (p.clone(), set_of(c).unwrap_or_default()))
            .collect();
        prop_assert_eq!(shares, Some(want), "{}: shares; {}", ctx, b);
        let readable = o.readable();
        let p = &b["personal"];
        if readable.is_empty() {
            prop_assert_eq!(p, &Value::Null, "{}: no class is readable; {}", ctx, b);
        } else {
            check_personal(&ctx, p, o, &readable)?;
        }
        Self::check_unreadable_absent(&ctx, b, o, &readable)?;
        Ok(())
    }

    pub(super) fn check_unreadable_absent(
        ctx: &str,
        b: &Value,
        o: &ModelOrder,
        readable: &BTreeSet<Class>,
    ) -> Result<(), TestCaseError> {
        let text = b.to_string();
        for c in Class::ALL.into_iter().filter(|c| !readable.contains(c)) {
            for s in o.secrets.of(c) {
                prop_assert!(
                    !text.contains(s),
                    "{}: {} field of class {} readable: {}",
                    ctx,
                    s,
                    c.as_str(),
                    b
                );
            }
        }
        Ok(())
    }

    /// The merchant view of m-1 and, for orders shared with it, the shipping view of sf-express.
    pub(super) async fn check_views(&self, what: &str) -> Result<(), TestCaseError> {
        for (i, o) in self.model.orders.iter().enumerate() {
            let ctx = format!("{what}: order {i} {}", o.id);
            self.stats.borrow_mut().view_checks += 1;
            let merchant_path = format!(
                "/v1/merchants/{OWN_MERCHANT}/orders/{}?min_version={}",
                o.id, o.version
            );
            let a = send_visible(|| self.app.get(&merchant_path, MERCHANT_M1), self.stats).await?;
            let b = &a.body;
            prop_assert_eq!(a.status, 200, "{}: merchant view {}", ctx, b);
            prop_assert_eq!(
                b["version"].as_u64(),
                Some(o.version),
                "{}: merchant view version {}",
                ctx,
                b
            );
            prop_assert_eq!(
                b["status"].as_str(),
                Some(o.status()),
                "{}: merchant view status {}",
                ctx,
                b
            );
            prop_assert_eq!(
                string_set(&b["erased_fields"]),
                set_of(&o.erased),
                "{}: merchant view erased_fields {}",
                ctx,
                b
            );
            let readable = o.readable_by("merchant", OWN_MERCHANT);
            prop_assert_eq!(
                string_set(&b["fields"]),
                set_of(&readable),
                "{}: merchant view fields {}",
                ctx,
                b
            );
            check_personal(&format!("{ctx}: merchant view"), b, o, &readable)?;
            Self::check_unreadable_absent(&format!("{ctx}: merchant view"), b, o, &readable)?;

            let shared = o
                .shares
                .contains_key(&("logistics".to_owned(), VIEWED_PROVIDER.to_owned()));
            let shipping_path = format!(
                "/v1/shipping/{VIEWED_PROVIDER}/orders/{}?min_version={}",
                o.id, o.version
            );
            let a = if shared {
                send_visible(|| self.app.get(&shipping_path, LOGISTICS_SF), self.stats).await?
            } else {
                // Not shared with it: 404 at once, whatever min_version says.
                send(self.app.get(&shipping_path, LOGISTICS_SF), self.stats).await?
            };
            let b = &a.body;
            if !shared {
                prop_assert_eq!(
                    a.status,
                    404,
                    "{}: shipping view of an order not shared with {} {}",
                    ctx,
                    VIEWED_PROVIDER,
                    b
                );
                continue;
            }
            prop_assert_eq!(a.status, 200, "{}: shipping view {}", ctx, b);
            prop_assert_eq!(
                b["version"].as_u64(),
                Some(o.version),
                "{}: shipping view version {}",
                ctx,
                b
            );
            prop_assert_eq!(
                b["status"].as_str(),
                Some(o.status()),
                "{}: shipping view status {}",
                ctx,
                b
            );
            prop_assert!(
                b.get("amount").is_none() && b.get("items").is_none(),
                "{}: shipping view shows no prices {}",
                ctx,
                b
            );
            let readable = o.readable_by("logistics", VIEWED_PROVIDER);
            prop_assert_eq!(
                string_set(&b["fields"]),
                set_of(&readable),
                "{}: shipping view fields {}",
                ctx,
                b
            );
            check_personal(&format!("{ctx}: shipping view"), b, o, &readable)?;
            Self::check_unreadable_absent(&format!("{ctx}: shipping view"), b, o, &readable)?;
        }
        Ok(())
    }

    pub(super) async fn check_all(&self, what: &str) -> Result<(), TestCaseError> {
        for i in 0..self.model.orders.len() {
            self.check_order(what, i).await?;
        }
        Ok(())
    }
}

/// `p` holds `consignee`, `contact` and `id_number`: each equal to what was
/// placed when its class is in `readable`, `null` otherwise.
pub(super) fn check_personal(
    ctx: &str,
    p: &Value,
    o: &ModelOrder,
    readable: &BTreeSet<Class>,
) -> Result<(), TestCaseError> {
    let s = &o.secrets;
    if readable.contains(&Class::Shipping) {
        prop_assert_eq!(
            p["consignee"]["name"].as_str(),
            Some(s.name.as_str()),
            "{}: consignee {}",
            ctx,
            p
        );
        prop_assert_eq!(
            p["consignee"]["mobile"].as_str(),
            Some(s.mobile.as_str()),
            "{}: consignee {}",
            ctx,
            p
        );
        prop_assert_eq!(
            p["consignee"]["address"]["street"].as_str(),
            Some(s.street.as_str()),
            "{}: consignee {}",
            ctx,
            p
        );
    } else {
        prop_assert_eq!(
            &p["consignee"],
            &Value::Null,
            "{}: consignee must be null {}",
            ctx,
            p
        );
    }
    if readable.contains(&Class::Contact) {
        prop_assert_eq!(
            p["contact"]["landline"].as_str(),
            s.landline.as_deref(),
            "{}: contact {}",
            ctx,
            p
        );
        prop_assert_eq!(
            p["contact"]["email"].as_str(),
            s.email.as_deref(),
            "{}: contact {}",
            ctx,
            p
        );
    } else {
        prop_assert_eq!(
            &p["contact"],
            &Value::Null,
            "{}: contact must be null {}",
            ctx,
            p
        );
    }
    if readable.contains(&Class::Identity) {
        prop_assert_eq!(
            p["id_number"].as_str(),
            s.id_number.as_deref(),
            "{}: id_number {}",
            ctx,
            p
        );
    } else {
        prop_assert_eq!(
            &p["id_number"],
            &Value::Null,
            "{}: id_number must be null {}",
            ctx,
            p
        );
    }
    Ok(())
}
