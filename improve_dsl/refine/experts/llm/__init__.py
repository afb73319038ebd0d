"""The LLM expert: ``expert.py`` (OpenAIExpert: any server speaking the OpenAI protocol),
``prompts.py`` (what it is told), ``constraint.py`` (which server answers, and how it holds a
reply to the grammar), ``pricing.py`` (what a call costs)."""
