"""History in SQL: the models and the migrations runner, the engine and sessions, the submit's
statements, the journal's replay into SQL (`recorder`, `store`), history queries (`records`),
job logs kept, retention, and journal entries set aside.
"""
