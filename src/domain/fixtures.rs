//! Realistic sample orders for tests, benchmarks and the demo. The people in
//! them are invented; the ID numbers carry valid check characters.

use super::order::{ContactInfo, NewOrder, PersonalData, ShippingInfo};
use super::validation::{
    Address, ConsigneeName, Currency, Email, IdNumber, Item, Landline, MerchantId, Mobile,
    OrderNumber, id_check_char,
};

/// A valid ID number whose digits vary with `n`.
pub fn id_number(n: u32) -> String {
    let first17 = format!(
        "440308{:04}{:02}{:02}{:03}",
        1960 + n % 50,
        1 + n % 12,
        1 + n % 28,
        n % 1000
    );
    let c = id_check_char(first17.as_bytes()) as char;
    format!("{first17}{c}")
}

/// Personal data of a sample consignee; `n` makes each one distinct.
pub fn personal(n: u32, with_contact: bool, with_id: bool) -> PersonalData {
    PersonalData {
        shipping: ShippingInfo {
            name: ConsigneeName::parse("consignee.name", &format!("张三丰{n}")).unwrap(),
            address: Address::parse(
                "consignee.address",
                "广东省",
                "深圳市",
                "南山区",
                &format!(
                    "科技园南区高新南七道{n}号 深圳湾科技生态园10栋B座{}室",
                    1000 + n % 9000
                ),
                "518057",
            )
            .unwrap(),
            mobile: Mobile::parse("consignee.mobile", &format!("138{:08}", n % 100_000_000))
                .unwrap(),
        },
        contact: if with_contact {
            ContactInfo {
                landline: Some(
                    Landline::parse(
                        "contact.landline",
                        &format!("0755-{:08}", 26_000_000 + n % 1_000_000),
                    )
                    .unwrap(),
                ),
                email: Some(
                    Email::parse("contact.email", &format!("zhang.sanfeng{n}@example.com"))
                        .unwrap(),
                ),
            }
        } else {
            ContactInfo::default()
        },
        identity: with_id.then(|| IdNumber::parse("id_number", &id_number(n)).unwrap()),
    }
}

/// A complete order for merchant `m-1`; real-name (a power tool) when `real_name`.
pub fn new_order(n: u32, real_name: bool) -> NewOrder {
    let mut items = vec![
        Item::parse(
            "items[0]",
            "SKU-TEA-250",
            "Longjing tea 250 g",
            2,
            8_800,
            false,
        )
        .unwrap(),
    ];
    if real_name {
        items.push(
            Item::parse(
                "items[1]",
                "SKU-DRILL-18V",
                "Cordless drill 18 V",
                1,
                39_900,
                true,
            )
            .unwrap(),
        );
    }
    let amount: u64 = items.iter().map(|i| i.line_total().unwrap()).sum();
    NewOrder::new(
        OrderNumber::parse("order_number", &format!("ON-2026-{n:08}")).unwrap(),
        MerchantId::parse("merchant_id", "m-1").unwrap(),
        items,
        Currency::parse("currency", "CNY").unwrap(),
        amount as i64,
        personal(n, true, real_name),
    )
    .unwrap()
}
