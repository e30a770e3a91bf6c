#!/usr/bin/env bash
# The rules a team would write, put in the user-owned rules.rs of three participants of the
# checkout saga (examples/checkout.toml) generated at $1, before it is built; ci/e2e_sagas.py
# says what each is for.
set -euo pipefail
ws=$1
cat >"$ws/services/inventory/src/domain/rules.rs" <<'RULES'
//! Business rules for Item: at most 10 units per reservation.

use super::{DomainError, Item, ItemCommand, Rules};

#[derive(Debug, Default, Clone, Copy)]
pub struct ItemRules;

impl Rules for ItemRules {
    fn check_command(&self, _current: &Item, command: &ItemCommand) -> Result<(), DomainError> {
        match command {
            ItemCommand::Reserve { quantity } if *quantity > 10 => Err(DomainError::Invalid {
                field: "quantity",
                reason: format!("at most 10 units per reservation, not {quantity}"),
            }),
            _ => Ok(()),
        }
    }
}
RULES
cat >"$ws/services/shipping/src/domain/rules.rs" <<'RULES'
//! Business rules for Shipment: never 7 units (the carrier's oddity).

use super::{DomainError, NewShipment, Rules};

#[derive(Debug, Default, Clone, Copy)]
pub struct ShipmentRules;

impl Rules for ShipmentRules {
    fn check_new(&self, new: &NewShipment) -> Result<(), DomainError> {
        if new.quantity == 7 {
            return Err(DomainError::Invalid {
                field: "quantity",
                reason: "the carrier takes no parcels of 7".into(),
            });
        }
        Ok(())
    }
}
RULES
cat >"$ws/services/payments/src/domain/rules.rs" <<'RULES'
//! Business rules for Payment: while PAYMENTS_E2E_VOID_BROKEN is set, the card network
//! refuses to void payments of 13 cents (a cause an operator can fix).

use super::{DomainError, Payment, PaymentCommand, Rules};

#[derive(Debug, Default, Clone, Copy)]
pub struct PaymentRules;

impl Rules for PaymentRules {
    fn check_command(
        &self,
        current: &Payment,
        command: &PaymentCommand,
    ) -> Result<(), DomainError> {
        match command {
            PaymentCommand::Void { .. }
                if current.amount_cents == 13
                    && std::env::var_os("PAYMENTS_E2E_VOID_BROKEN").is_some() =>
            {
                Err(DomainError::Invalid {
                    field: "amount_cents",
                    reason: "the card network refuses to void this payment".into(),
                })
            }
            _ => Ok(()),
        }
    }
}
RULES
