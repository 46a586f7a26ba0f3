"""Where jobs live: memory, a durable file store, or Redis Streams — behind one seam."""
