//! Chat conversations and their messages, in Postgres.

use anyhow::Context;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::Db;
use crate::store::records::{Conversation, ConversationWithMessages, StoredMessage};

fn conversation_from_row(row: &PgRow) -> sqlx::Result<Conversation> {
    Ok(Conversation {
        id: row.try_get(0)?,
        title: row.try_get(1)?,
        model: row.try_get(2)?,
        created_at: row.try_get(3)?,
        updated_at: row.try_get(4)?,
    })
}

impl Db {
    pub async fn list_conversations(&self) -> anyhow::Result<Vec<Conversation>> {
        let rows = sqlx::query(
            "SELECT id, title, model, created_at, updated_at FROM conversations
             ORDER BY updated_at DESC, created_at DESC, id LIMIT 500",
        )
        .fetch_all(&self.pool)
        .await
        .context("listing conversations")?;
        rows.iter()
            .map(conversation_from_row)
            .collect::<Result<_, _>>()
            .context("listing conversations")
    }

    pub async fn insert_conversation(&self, row: Conversation) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO conversations (id, title, model, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(row.id)
        .bind(row.title)
        .bind(row.model)
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(&self.pool)
        .await
        .context("creating conversation")?;
        Ok(())
    }

    pub async fn conversation(
        &self,
        id: String,
    ) -> anyhow::Result<Option<ConversationWithMessages>> {
        let row = sqlx::query(
            "SELECT id, title, model, created_at, updated_at FROM conversations WHERE id = $1",
        )
        .bind(&id)
        .fetch_optional(&self.pool)
        .await
        .context("reading conversation")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let conversation = conversation_from_row(&row)?;
        let messages = sqlx::query(
            "SELECT role, content, created_at FROM messages WHERE conversation_id = $1 ORDER BY id",
        )
        .bind(&id)
        .fetch_all(&self.pool)
        .await
        .context("reading messages")?
        .iter()
        .map(|row| {
            Ok(StoredMessage {
                role: row.try_get(0)?,
                content: row.try_get(1)?,
                created_at: row.try_get(2)?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
        Ok(Some(ConversationWithMessages {
            conversation,
            messages,
        }))
    }

    pub async fn add_message(
        &self,
        conversation_id: String,
        role: String,
        content: String,
        created_at: i64,
    ) -> anyhow::Result<Option<StoredMessage>> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE conversations SET updated_at = $2 WHERE id = $1")
            .bind(&conversation_id)
            .bind(created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO messages (conversation_id, role, content, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&conversation_id)
        .bind(&role)
        .bind(&content)
        .bind(created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.context("saving message")?;
        Ok(Some(StoredMessage {
            role,
            content,
            created_at,
        }))
    }

    pub async fn delete_conversation(&self, id: String) -> anyhow::Result<bool> {
        let deleted = sqlx::query("DELETE FROM conversations WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .context("deleting conversation")?
            .rows_affected();
        Ok(deleted > 0)
    }
}
